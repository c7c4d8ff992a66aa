"""Both Cassandra clusters connected at once (``Endpoints.cassandra_sessions``), on the real nodes."""

from __future__ import annotations

import dataclasses

import pytest

pytestmark = pytest.mark.integration


def test_sessions_on_both_clusters_connect_together(endpoints) -> None:
    with endpoints.cassandra_sessions() as (src, dst):
        names = [s.execute("SELECT cluster_name FROM system.local").one()[0] for s in (src, dst)]
    assert names[0] != names[1]  # two independent clusters: the shared source and the tenant's target
    assert src.is_shutdown and dst.is_shutdown


@pytest.mark.parametrize("side", ["cassandra_source", "cassandra_target"])
def test_an_unreachable_cluster_is_named_and_the_other_session_is_shut_down(endpoints, side, monkeypatch) -> None:
    from tenant_migration.endpoints import CassandraEndpoint

    broken = dataclasses.replace(getattr(endpoints, side), port=1)  # nothing listens on port 1
    opened = []
    real = CassandraEndpoint.session

    def spy(self, *args, **kwargs):
        cm = real(self, *args, **kwargs)
        opened.append(cm)
        return cm
    monkeypatch.setattr(CassandraEndpoint, "session", spy)
    with pytest.raises(ConnectionError, match=rf"cannot reach Cassandra {broken.host}:1/"):
        with dataclasses.replace(endpoints, **{side: broken}).cassandra_sessions():
            pytest.fail("connected to a cluster that does not listen")
    assert len(opened) == 2
    for cm in opened:  # the generator of each context manager has finished: its cluster was shut down
        assert cm.gen.gi_frame is None
