"""private_redis's servers are the test's own: a port where something else listens, a Redis
that is not ours included, is passed over and left as it was."""

import socket
import threading
from pathlib import Path

from tests.brokers import free_port, run_script, server_pid, start_private_redis


def test_a_port_where_another_redis_answers_is_passed_over(redis_url: str, tmp_path: Path) -> None:
    shared_port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    shared_pid = server_pid(redis_url)
    assert shared_pid is not None
    url, env = start_private_redis(str(tmp_path / "redis"), iter([shared_port, free_port()]))
    try:
        assert env["REDIS_PORT"] != str(shared_port)
        assert server_pid(url) not in (None, shared_pid)
    finally:
        run_script("start_redis.sh", "stop", env=env)
    assert server_pid(url) is None  # ours is gone; the shared one is still up
    assert server_pid(redis_url) == shared_pid


def test_a_port_another_process_listens_on_is_passed_over(tmp_path: Path) -> None:
    """A listener that is not Redis (it hangs up at once): redis-server cannot bind its port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        taken_port = taken.getsockname()[1]
        stop = threading.Event()
        hanging_up = threading.Thread(target=_hang_up, args=(taken, stop), daemon=True)
        hanging_up.start()
        try:
            url, env = start_private_redis(str(tmp_path / "redis"), iter([taken_port, free_port()]))
        finally:
            stop.set()
            hanging_up.join()
    try:
        assert env["REDIS_PORT"] != str(taken_port) and server_pid(url) is not None
    finally:
        run_script("start_redis.sh", "stop", env=env)


def _hang_up(listener: socket.socket, stop: threading.Event) -> None:
    listener.settimeout(0.1)
    while not stop.is_set():
        try:
            connection, _ = listener.accept()
        except TimeoutError:
            continue
        connection.close()
