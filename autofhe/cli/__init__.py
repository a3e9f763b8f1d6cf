"""The ``autofhe`` command. Thin: parse arguments, call the library, print. The commands
live by what they do: :mod:`~autofhe.cli.search` trains (``search``, ``worker``, ``demo``),
:mod:`~autofhe.cli.inspection` reads studies (``pareto``, ``trials``, ``studies``,
``dashboard``), :mod:`~autofhe.cli.deploy` ships models (``export``, ``predict``, ``serve``,
``remote-predict``); :mod:`~autofhe.cli.common` holds what they share.

Errors become one line on stderr and a non-zero exit code; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import os
import sys
import warnings

from autofhe.cli import deploy, inspection, search
from autofhe.cli.common import Parser
from autofhe.errors import AutofheError, Interrupted, on_stop_signals


def build_parser() -> Parser:
    from autofhe import __version__

    parser = Parser(
        prog="autofhe",
        description="AutoML for neural networks that run on encrypted data (TFHE).",
    )
    parser.add_argument("--version", action="version", version=f"autofhe {__version__}")
    parser.set_defaults(debug=False)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    search.add_commands(sub)
    inspection.add_commands(sub)
    deploy.add_commands(sub)
    return parser


#: commands whose Optuna log lines are noise unless --debug (`studies` quiets Optuna itself:
#: on an SQLite file it never imports it)
OPTUNA_COMMANDS = ("demo", "search", "worker", "pareto", "trials", "dashboard", "export")


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit code (0 ok, 2 bad input, 1 anything else).

    From the console script (``argv`` None) a failing code ends the process at once: after an
    encrypted execution, concrete's exit hook would otherwise turn any exit status into 0.
    """
    try:
        code = _main(argv)
    except SystemExit:
        raise  # argparse's usage errors (2) and --help (0), before any encrypted run
    except BaseException:  # --debug: the traceback, and still a truthful status
        if argv is not None:
            raise
        import traceback

        traceback.print_exc()
        code = 1
    if argv is None and code != 0:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what advice lines repeat
    if not args.debug:
        warnings.filterwarnings("ignore")
        if args.command in OPTUNA_COMMANDS:
            import optuna

            optuna.logging.set_verbosity(optuna.logging.WARNING)
    on_stop_signals()  # Ctrl-C and SIGTERM: one line and 130 / 143, wherever they land
    try:
        return args.func(args)
    except Interrupted as exc:
        print("autofhe: interrupted", file=sys.stderr)
        return exc.exit_code
    except AutofheError as exc:
        if args.debug:
            raise
        print(f"autofhe: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("autofhe: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `autofhe pareto | head`: the reader has all it wanted
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush
        return 1
    except Exception as exc:  # not ours: still one line (and exit 1), the traceback on --debug
        if args.debug:
            raise
        first = (str(exc).splitlines() or [""])[0]
        print(
            f"autofhe: error: {type(exc).__name__}: {first} (rerun with --debug for details)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
