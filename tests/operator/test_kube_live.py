"""The API client against the real API server: its plain-text answers and its paged lists."""

from __future__ import annotations

import kopf
import pytest

from messaging_operator.errors import KubeNotFoundError
from messaging_operator.kube import SECRET, Kind, KubeClient
from tests.operator.kubeapi import Kube
from tests.support.k8s import K8sCluster

UNKNOWN = Kind("nothing.example.com/v1", "Thing", "things")


async def admin_client(cluster: K8sCluster) -> KubeClient:
    info = kopf.ConnectionInfo(
        server=cluster.server,
        ca_path=str(cluster.ca_cert),
        certificate_path=str(cluster.client_cert),
        private_key_path=str(cluster.client_key),
    )

    async def login() -> kopf.ConnectionInfo:
        return info

    return await KubeClient.connect(login)


async def test_the_api_servers_plain_text_404_is_a_not_found_error(
    k8s_cluster: K8sCluster, k8s_namespace: str
) -> None:
    """An API group that is not installed answers `404 page not found` in text/plain."""
    api = await admin_client(k8s_cluster)
    try:
        with pytest.raises(KubeNotFoundError) as caught:
            await api.get(UNKNOWN, k8s_namespace, "x")
        assert "404 page not found" in str(caught.value)
        assert await api.find(UNKNOWN, k8s_namespace, "x") is None
    finally:
        await api.close()


async def test_a_list_longer_than_a_page_comes_back_whole(
    k8s_cluster: K8sCluster, k8s_namespace: str
) -> None:
    kube = Kube(k8s_cluster, k8s_namespace)
    for i in range(5):
        kube.create(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": f"paged-{i}", "labels": {"paged": "yes"}},
                "stringData": {"k": "v"},
            }
        )
    kube.session.close()
    api = await admin_client(k8s_cluster)
    try:
        items = await api.list(SECRET, k8s_namespace, "paged=yes", page_size=2)
        assert sorted(i["metadata"]["name"] for i in items) == [f"paged-{i}" for i in range(5)]
    finally:
        await api.close()
