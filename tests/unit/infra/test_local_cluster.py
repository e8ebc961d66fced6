"""The two-node cluster's plan: each node its own home, temp dir and ports."""

from __future__ import annotations

from pathlib import Path

from relay.infra import local_cluster as lc


def test_two_nodes_share_no_folder_and_no_port(tmp_path: Path) -> None:
    head = lc._node("ray-head", tmp_path, 1)
    worker = lc._node("ray-worker", tmp_path, 1, lc._ports_of(head))
    try:
        assert head.home != worker.home and head.temp_dir != worker.temp_dir
        # Ray's socket paths (session dir + /sockets/plasma_store) stay within 107 bytes.
        assert len(str(head.temp_dir)) < 40
        assert not lc._ports_of(head) & lc._ports_of(worker)  # worker ranges included
        for node in (head, worker):
            argv = lc._node_argv(node, "127.0.0.1")
            assert f"--temp-dir={node.temp_dir}" in argv
            assert node.ports["max_worker"] - node.ports["min_worker"] == lc.WORKER_PORTS - 1
            flags = [a.split("=")[0] for a in argv if a.startswith("--")]
            assert len(flags) == len(set(flags))  # no flag twice
    finally:
        for node in (head, worker):
            node.temp_dir.rmdir()
