"""The RDS replica controller's idempotence logic against a fake boto3 client (the seam), including
moto's quirk of keeping the source link after a promotion."""

from __future__ import annotations

from typing import Any

import pytest

from tenant_migration.replica import PROMOTED_TAG, RdsReplicaController


class FakeRds:
    def __init__(self, keeps_source_link: bool) -> None:
        self.keeps = keeps_source_link
        self.source: str | None = "platform-primary"
        self.tags: dict[str, str] = {}
        self.promotions = 0

    def describe_db_instances(self, DBInstanceIdentifier: str) -> dict[str, Any]:
        inst = {"DBInstanceIdentifier": DBInstanceIdentifier, "DBInstanceArn": "arn:x", "DBInstanceStatus": "available"}
        if self.source:
            inst["ReadReplicaSourceDBInstanceIdentifier"] = self.source
        return {"DBInstances": [inst]}

    def list_tags_for_resource(self, ResourceName: str) -> dict[str, Any]:
        return {"TagList": [{"Key": k, "Value": v} for k, v in self.tags.items()]}

    def add_tags_to_resource(self, ResourceName: str, Tags: list[dict[str, str]]) -> None:
        self.tags.update({t["Key"]: t["Value"] for t in Tags})

    def promote_read_replica(self, DBInstanceIdentifier: str) -> None:
        self.promotions += 1
        if not self.keeps:
            self.source = None


@pytest.mark.parametrize("keeps", [pytest.param(True, id="moto keeps the source link"),
                                   pytest.param(False, id="real RDS drops the source link")])
def test_rds_promotes_once(keeps: bool) -> None:
    fake = FakeRds(keeps)
    ctl = RdsReplicaController(fake, "platform-replica")
    assert ctl.reattach().action == "not_detached"
    first, second = ctl.detach(), ctl.detach()
    assert fake.promotions == 1
    assert (first.already_detached, second.already_detached) == (False, True)
    assert PROMOTED_TAG in fake.tags
    assert ctl.reattach().reclone_required
    assert ctl.describe()["detached"] is True
