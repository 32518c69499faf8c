"""One exception type for bad user input, so every CLI can print it as one readable line."""


class UsageError(Exception):
    """Bad arguments or data: the CLI prints the message and exits with status 2."""


def run_cli(main, argv=None) -> int:
    """Runs `main(argv)`; a UsageError becomes one line on stderr and exit status 2."""
    import sys

    try:
        main(argv)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
