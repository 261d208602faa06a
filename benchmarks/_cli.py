"""Entry point shared by the benchmark scripts that take user arguments: an OodsegError is one line, exit 1."""
from oodseg.errors import OodsegError


def run_main(main) -> None:
    """Call ``main()``; print ``error: ...`` and exit 1 on an :class:`OodsegError`."""
    try:
        main()
    except OodsegError as exc:
        raise SystemExit(f"error: {exc}") from None
