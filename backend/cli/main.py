"""The ``tokenprism`` command line: the one typer app and the console-script entry point.

The commands live one module per group (:mod:`.runs`, :mod:`.audit`, :mod:`.serve`,
:mod:`.groups`, :mod:`.probes`, :mod:`.experiments`, :mod:`.lens`); this module only assembles
them, so none of them imports it. Every user-facing failure is a
:class:`~backend.errors.UserError`: one line on stderr, exit status 2, no traceback
(``TOKENPRISM_DEBUG=1`` shows tracebacks of unexpected errors).
"""

from __future__ import annotations

import logging
import os
import sys

import typer

from tokenprism.backend.cli import audit, diff, generate, groups, lens, runs, serve
from tokenprism.backend.cli.add_metrics import add_metrics
from tokenprism.backend.cli.common import err
from tokenprism.backend.cli.experiments import experiment_app
from tokenprism.backend.cli.probes import probe_app
from tokenprism.backend.errors import UserError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="TokenPrism: token-level analysis of language-model outputs.",
)

# in the order `tokenprism --help` lists them
_COMMANDS = (
    runs.prepare,
    runs.score,
    generate.generate,
    runs.runs,
    runs.show,
    runs.sql,
    audit.audit,
    add_metrics,
    serve.serve,
    serve.ui,
    serve.up,
    runs.metrics,
    groups.group,
    groups.rollouts,
    groups.contrastive,
    lens.lens,
    lens.attribute,
    diff.diff,
)
for _command in _COMMANDS:
    app.command()(_command)
app.add_typer(probe_app, name="probe")
app.add_typer(experiment_app, name="experiment")


def main() -> None:
    """Console-script entry point with user-friendly errors."""
    logging.basicConfig(level=os.environ.get("TOKENPRISM_LOG", "WARNING"))
    code = 0
    try:
        app()  # standalone: typer prints usage errors and exits through SystemExit
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except KeyboardInterrupt:
        err.print("interrupted")
        code = 130
    except UserError as e:
        err.print(f"error: {e}", markup=False)
        code = 2
    except Exception as e:  # the last line of defence against tracebacks
        if os.environ.get("TOKENPRISM_DEBUG"):
            raise
        first = str(e).splitlines()[0] if str(e) else ""
        err.print(
            f"error: unexpected {type(e).__name__}: {first} (set TOKENPRISM_DEBUG=1 for details)",
            markup=False,
        )
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    # duckdb 2.0's nanobind bindings print a screen of "leaked instance" warnings during
    # interpreter finalisation whenever torch is loaded too (cosmetic: the process is ending and
    # every store was closed above). Skipping finalisation keeps the terminal readable.
    os._exit(code)


if __name__ == "__main__":
    main()
