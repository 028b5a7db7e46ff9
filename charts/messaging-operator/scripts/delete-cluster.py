"""Helm pre-delete hook: delete the release's MessagingCluster and wait until it is gone.

The operator holds a finalizer on every MessagingCluster (kopf stops the cluster's autoscaling
timer before letting it go). If Helm deleted the cluster together with the operator and its
RBAC, nothing would be left to remove that finalizer and the cluster would hang in Terminating.
So this runs first, while the operator still runs: it deletes the cluster, the operator releases
it, Kubernetes garbage-collects its children, and only then does Helm remove the operator.

Usage: python delete-cluster.py NAMESPACE NAME TIMEOUT_SECONDS (in-cluster credentials, or
$KUBECONFIG). Exit status 1 when the cluster is still there after the timeout.
"""

import sys
import time

from kubernetes import client, config
from kubernetes.client.rest import ApiException

GROUP, VERSION, PLURAL = "messaging.platform.io", "v1alpha1", "messagingclusters"


def main(namespace: str, name: str, timeout: float) -> int:
    config.load_config()
    api = client.CustomObjectsApi()
    try:
        api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        print(f"deleting MessagingCluster {namespace}/{name}", flush=True)
    except ApiException as error:
        if error.status != 404:
            raise
    deadline = time.monotonic() + timeout
    while True:
        try:
            api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        except ApiException as error:
            if error.status == 404:
                print(f"MessagingCluster {namespace}/{name} is gone", flush=True)
                return 0
            raise
        if time.monotonic() > deadline:
            print(
                f"MessagingCluster {namespace}/{name} still exists after {timeout:.0f}s: is the "
                "operator running? (kubectl describe mc; to give up: helm uninstall --no-hooks)",
                flush=True,
            )
            return 1
        time.sleep(1)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], float(sys.argv[3])))
