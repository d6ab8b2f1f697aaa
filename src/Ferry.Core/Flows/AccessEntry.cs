using Ferry.Core.ControlPlane;

namespace Ferry.Core.Flows;

/// <summary>One grant of policy: <paramref name="Identity"/> ("device/dv_…") may reach <paramref name="Resource"/>.</summary>
public sealed record AccessEntry(string Identity, ResourceGrant Resource);

/// <summary>The outcome of an access check: the status to answer, why, and the resource that decided it (null when none matched).</summary>
public sealed record AccessDecision(FlowStatus Status, string Message, ResourceGrant? Resource)
{
    public bool IsAllowed => Status == FlowStatus.Ok;
}
