"""The admin API served by uvicorn in a thread of the node process."""

import logging
import socket
import threading
import time

import uvicorn
from fastapi import FastAPI

from cad_node.config import AdminSettings

logger = logging.getLogger(__name__)

_START_TIMEOUT_SECONDS = 10.0


class AdminServer:
    """uvicorn on a socket bound here, so a busy port is reported, not a thread's exit."""

    def __init__(self, app: FastAPI, settings: AdminSettings) -> None:
        self._app = app
        self._settings = settings
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port: int | None = None

    def start(self) -> bool:
        """Bind and serve; False (logged) when the port cannot be bound.

        A node that cannot serve its admin page still receives and processes
        images: the admin API is not on the clinical data path.
        """
        try:
            sock = self._bind()
        except OSError as exc:
            logger.error(
                "admin API not started: cannot listen on %s:%d: %s",
                self._settings.bind_address,
                self._settings.port,
                exc.strerror or exc,
            )
            return False
        self.port = int(sock.getsockname()[1])
        config = uvicorn.Config(self._app, log_level="warning", lifespan="off", access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="cad-node-admin", daemon=True
        )
        self._thread.start()
        self._wait_started()
        if not self._settings.tokens:
            logger.warning(
                "admin API: no token configured (admin.tokens): every request but /health "
                "is refused with 401"
            )
        logger.info("admin API on http://%s:%d/", self._settings.bind_address, self.port)
        return True

    def _bind(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self._settings.bind_address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self._settings.bind_address, self._settings.port))
            sock.listen(128)
        except OSError:
            sock.close()
            raise
        return sock

    def _wait_started(self) -> None:
        deadline = time.monotonic() + _START_TIMEOUT_SECONDS
        while self._server is not None and not self._server.started:
            if time.monotonic() > deadline or not (self._thread and self._thread.is_alive()):
                logger.error("admin API did not start")
                return
            time.sleep(0.01)

    def stop(self) -> None:
        """Finish the requests in flight and stop listening."""
        if self._server is None or self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._server = None
        self._thread = None
