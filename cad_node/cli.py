"""The ``cad-node`` command line: serve, status, demo, rules, synth, train, evaluate, models.

Each command imports what it runs when it runs: ``--help`` and the node's commands import
none of the lab's packages (``demo``, ``synth``, ``train``, ``evaluate``: :mod:`cad_node.lab`).
"""

import argparse
import atexit
import gc
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType

from cad_node import NOT_FOR_CLINICAL_USE, __version__
from cad_node.errors import CadNodeError
from cad_node.lab import lab_command
from cad_node.security import redaction


def main(argv: Sequence[str] | None = None) -> int:
    _freeze_objects_at_exit()
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(getattr(args, "log_level", None) or "INFO")
    try:
        code = int(args.func(args))
        sys.stdout.flush()  # a reader that went away shows here, not as a traceback at exit
        return code
    except BrokenPipeError:
        if args.func in (_serve, _worker, _ingest):
            raise  # a socket's, not stdout's: not a reader that has read enough
        _discard_stdout()
        return EXIT_BROKEN_PIPE
    except CadNodeError as exc:
        print(f"cad-node: error: {exc}", file=sys.stderr)
        return 2


def _freeze_objects_at_exit() -> None:
    """At exit, after the handlers registered later (multiprocessing's, torch's), move every
    object out of the garbage collector's reach: the interpreter's last collections would walk
    all that torch, pydicom and the models made, seconds at each ``serve`` stop and command
    on two cores. Exit handlers registered earlier (logging's flush) still run; the memory goes
    back to the system with the process."""
    atexit.unregister(gc.freeze)  # once, however often main() runs in one process
    atexit.register(gc.freeze)


EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE
"""``cad-node status | head``: the reader closed the pipe; exit as a shell reports a command
killed by SIGPIPE (141), silently, like ``cat``. Python ignores SIGPIPE (the node's sockets
need EPIPE as an error, not a signal), so the write raises BrokenPipeError instead."""


def _discard_stdout() -> None:
    """Point stdout at /dev/null, so that Python's flush at exit does not fail again
    (the standard recipe: https://docs.python.org/3/library/signal.html#note-on-sigpipe)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout without a file descriptor (captured in tests)
        pass


def configure_logging(level: str) -> None:
    """The node's own loggers at ``level``; chatty libraries at WARNING (one line per image).

    Values that libraries quote from data sets are withheld (:mod:`cad_node.security.redaction`).
    """
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
    redaction.install()
    for library in ("pynetdicom", "apscheduler", "alembic"):
        logging.getLogger(library).setLevel(max(logging.WARNING, logging.getLevelName(level)))


def build_parser() -> argparse.ArgumentParser:
    from cad_node.commands.config import add_commands as add_config_commands
    from cad_node.commands.feedback import add_commands as add_feedback_commands
    from cad_node.commands.models import add_commands as add_model_commands
    from cad_node.commands.purge import add_command as add_purge_command
    from cad_node.commands.report import add_command as add_report_command
    from cad_node.commands.rules import add_commands as add_rules_commands

    parser = argparse.ArgumentParser(
        prog="cad-node",
        description=f"A DICOM node for computer-aided diagnosis. {NOT_FOR_CLINICAL_USE}.",
    )
    parser.add_argument("--version", action="version", version=f"cad-node {__version__}")
    parser.set_defaults(func=lambda _args: _print_help(parser))
    commands = parser.add_subparsers(title="commands")
    _add_serve(commands)
    _add_worker(commands)
    _add_ingest(commands)
    _add_status(commands)
    _add_demo(commands)
    add_rules_commands(commands)
    add_model_commands(commands)
    add_config_commands(commands)
    add_purge_command(commands)
    add_feedback_commands(commands)
    add_report_command(commands)
    return parser


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="node YAML config (default: the embedded defaults, SQLite and ./cad-node-data)",
    )


def _log_level_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-level",
        default=None,
        choices=["DEBUG", "INFO", "WARNING"],
        help="overrides the config's log_level",
    )


def _add_serve(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    serve = commands.add_parser("serve", help="run the node: receive, route, infer, send")
    _config_argument(serve)
    _log_level_argument(serve)
    serve.set_defaults(func=_serve)


def _add_worker(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    worker = commands.add_parser(
        "worker", help="run jobs only, beside `serve` or on another host (shared PostgreSQL)"
    )
    _config_argument(worker)
    _log_level_argument(worker)
    worker.set_defaults(func=_worker)


def _add_ingest(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    ingest = commands.add_parser(
        "ingest",
        help="an extra receiving process on serve's port (serve starts these itself when the "
        "config says ingest_processes > 1); reads the node's settings as JSON on stdin",
    )
    ingest.add_argument(
        "--listening-fd",
        type=int,
        required=True,
        help="an inherited socket: serve's listening socket, accepted on beside it",
    )
    ingest.add_argument(
        "--journal-fd",
        type=int,
        required=True,
        help="an inherited socket to serve's process, which commits the journal rows",
    )
    ingest.set_defaults(func=_ingest)


def _add_status(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    status = commands.add_parser("status", help="series, jobs and deliveries in the journal")
    _config_argument(status)
    status.add_argument("--limit", type=int, default=20, help="rows per table (newest first)")
    status.set_defaults(func=_status)


def _add_demo(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    demo = commands.add_parser(
        "demo",
        help="synthetic chest CT, mammogram and fundus pair through a local node; "
        "PNGs and index.html in --out",
    )
    demo.add_argument("--out", type=Path, required=True, help="folder for the PNGs and HTML")
    demo.add_argument(
        "--only",
        type=_demo_exams,
        default=None,
        help="comma-separated exams to send: ct, mammo, fundus (default: all three)",
    )
    demo.add_argument("--rows", type=int, default=384, help="CT image rows and columns")
    demo.add_argument("--slices", type=int, default=200, help="CT slices (1.25 mm apart)")
    demo.add_argument("--seed", type=int, default=20261125, help="CT phantom seed")
    demo.set_defaults(func=lab_command("demo", _demo))


def _demo_exams(text: str) -> tuple[str, ...]:
    from cad_node.demo import EXAMS

    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = sorted(set(names) - set(EXAMS))
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(EXAMS)}; got {text!r}")
    return names


def _demo(args: argparse.Namespace) -> int:
    from cad_node.demo import EXAMS, DemoOptions, run_demo
    from cad_node.demo.ct import CtSpec

    configure_logging("WARNING")
    options = DemoOptions(
        out_dir=args.out,
        ct=CtSpec(rows=args.rows, slices=args.slices, seed=args.seed),
        exams=args.only or EXAMS,
    )
    print(f"cad-node demo: {run_demo(options)}  ({NOT_FOR_CLINICAL_USE})")
    return 0


PRIVATE_UMASK = 0o077
"""What the node creates (storage directories, spool and result files, the SQLite journal,
its -wal and -shm) is the node's user's alone: images and their UIDs are patient data."""


def _restrict_new_files() -> None:
    """Files and directories made from here on: mode 0600 / 0700 (inherited by ingest
    processes and the decoder)."""
    os.umask(PRIVATE_UMASK)


def _serve(args: argparse.Namespace) -> int:
    from cad_node.app import Node
    from cad_node.config import load_settings

    _restrict_new_files()
    settings = load_settings(args.config)
    configure_logging(args.log_level or settings.log_level)
    node = Node(settings)  # takes the storage folder's lock and checks the port first

    _stop_on_signals(node.request_stop, "stopping")
    try:
        node.start()
        node.wait()
    finally:
        node.stop()
    return 0


def _worker(args: argparse.Namespace) -> int:
    from cad_node.config import load_settings
    from cad_node.worker import WorkerProcess

    _restrict_new_files()
    settings = load_settings(args.config)
    configure_logging(args.log_level or settings.log_level)
    process = WorkerProcess(settings)

    _stop_on_signals(process.request_stop, "stopping after the current job")
    process.run()
    return 0


def _ingest(args: argparse.Namespace) -> int:
    from cad_node.config import Settings
    from cad_node.ingest.processes import run_ingest_process

    _restrict_new_files()
    settings = Settings.model_validate_json(sys.stdin.read())
    configure_logging(settings.log_level)
    run_ingest_process(settings, args.listening_fd, args.journal_fd)
    return 0


def _status(args: argparse.Namespace) -> int:
    from cad_node.commands.status import render_status
    from cad_node.config import load_settings

    print(render_status(load_settings(args.config), limit=args.limit))
    return 0


def _stop_on_signals(request_stop: Callable[[], None], what: str) -> None:
    """SIGTERM and SIGINT ask for a clean stop (safe: ``request_stop`` only sets an event)."""

    def _stop(signum: int, _frame: FrameType | None) -> None:
        logging.getLogger("cad_node").info("signal %d: %s", signum, what)
        request_stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
