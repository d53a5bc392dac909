"""ARM as make submit's prepare reads it (Registries - Get; Compute - Get; Role Assignments - List For Scope), for
both SDKs' tests: the shapes, and aml.arm_get answered from them."""

import aml

REGISTRY_PROPERTIES = {"loginServer": "myreg.registry.example", "adminUserEnabled": False}
AML_COMPUTE = {
    "computeType": "AmlCompute",
    "properties": {"vmSize": "STANDARD_D2_V2", "vmPriority": "Dedicated", "scaleSettings": {"maxNodeCount": 4}},
}
ACR_PULL = "7f951dda-4ed3-4680-a7ca-43fe172d538d"


def answer(monkeypatch):
    """aml.arm_get answers for a registry with the admin user off and a cluster whose identity may pull;
    the list of what was read (the last part of each path), in order."""
    registry = {"id": "/subscriptions/0/registries/myreg", "name": "myreg", "properties": REGISTRY_PROPERTIES}
    cluster = {"identity": {"type": "SystemAssigned", "principalId": "p-1"}, "properties": AML_COMPUTE}
    pull = [{"properties": {"roleDefinitionId": "/providers/Microsoft.Authorization/roleDefinitions/" + ACR_PULL}}]
    arm = {registry["id"]: registry, "/computes/cpu-cluster": cluster, "/roleAssignments": {"value": pull}}
    read = []

    def arm_get(path, token, api_version, base=aml.ARM, query=""):  # the network edge: ARM's GETs
        read.append(path.rsplit("/", 1)[-1])
        return next(v for k, v in arm.items() if path.endswith(k))

    monkeypatch.setattr(aml, "arm_get", arm_get)
    return read
