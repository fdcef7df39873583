"""Every module of the package stays small enough to read in one sitting."""

from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "langchain_moa"
MAX_LINES = 650

EXCEPTIONS = {
    "chat_model.py",  # being split
}
"""Modules allowed to be longer for now, relative to the package."""


def test_no_module_of_the_package_is_too_long() -> None:
    too_long = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = path.relative_to(PACKAGE).as_posix()
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > MAX_LINES and name not in EXCEPTIONS:
            too_long[name] = lines
    assert not too_long, f"modules over {MAX_LINES} lines, split them by concern: {too_long}"


def test_the_exceptions_still_exist() -> None:
    assert all((PACKAGE / name).is_file() for name in EXCEPTIONS)
