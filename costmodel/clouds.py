"""What each cloud's SkyPilot adapter cannot do, for the features our tasks need.

A plan that places a stage on a cloud that cannot run it (a bucket mount on RunPod, two nodes on Prime
Intellect, spot on Lambda) is a plan that fails at launch; the planner only considers clouds that can.

Source: `_CLOUD_UNSUPPORTED_FEATURES` in sky/clouds/<cloud>.py, SkyPilot 0.14.1 (tests/test_clouds.py checks
this table against the installed SkyPilot). Only the features our task YAMLs use are listed.
"""
from __future__ import annotations

MULTI_NODE, STORAGE_MOUNTING, SPOT, AUTOSTOP, AUTODOWN = (
    "multi-node", "storage_mounting", "spot_instance", "autostop", "autodown")
FEATURES = (MULTI_NODE, STORAGE_MOUNTING, SPOT, AUTOSTOP, AUTODOWN)

UNSUPPORTED = {
    "aws": (), "azure": (), "gcp": (), "ibm": (), "mithril": (), "nebius": (), "oci": (),
    "cudo": (SPOT,), "do": (SPOT,), "fluidstack": (SPOT,), "lambda": (SPOT,), "paperspace": (SPOT,),
    "scp": (SPOT,),
    "primeintellect": (AUTODOWN, AUTOSTOP, MULTI_NODE),
    "runpod": (MULTI_NODE, STORAGE_MOUNTING),
    "vast": (MULTI_NODE, STORAGE_MOUNTING),
    "seeweb": (MULTI_NODE, SPOT, STORAGE_MOUNTING),
    "shadeform": (MULTI_NODE, SPOT, STORAGE_MOUNTING),
    "hyperbolic": (AUTODOWN, AUTOSTOP, MULTI_NODE, SPOT, STORAGE_MOUNTING),
    # Own clusters (sky/clouds/kubernetes.py, ssh.py): no spot unless the cluster labels spot nodes (a live check we
    # do not make: a lab's GPUs are on-demand), no autostop (`_unsupported_features_for_resources` adds it).
    "kubernetes": (AUTOSTOP, SPOT), "ssh": (AUTOSTOP, SPOT),
}


def supports(cloud: str, feature: str) -> bool:
    """Unknown clouds are assumed able: SkyPilot itself refuses at launch what they cannot do."""
    return feature not in UNSUPPORTED.get(str(cloud).lower(), ())


def able(clouds, needs) -> tuple[list[str], dict[str, list[str]]]:
    """(clouds that support every feature in `needs`, {cloud: [missing features]} for the others)."""
    ok, missing = [], {}
    for cloud in clouds:
        lacks = [f for f in needs if not supports(cloud, f)]
        if lacks:
            missing[cloud] = lacks
        else:
            ok.append(cloud)
    return ok, missing
