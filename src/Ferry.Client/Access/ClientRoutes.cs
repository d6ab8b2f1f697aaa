using Ferry.Core.ControlPlane;
using Ferry.Core.Flows;

namespace Ferry.Client.Access;

/// <summary>Where a destination goes: through Ferry to a resource's connector, directly (split tunnelling), or nowhere.</summary>
public enum RouteKind
{
    Ferry,
    Direct,
    Refused,
}

/// <summary>The route for one destination, the resource that carries it (for <see cref="RouteKind.Ferry"/>), and why.</summary>
public sealed record RouteDecision(RouteKind Kind, ResourceGrant? Resource, FlowStatus Status, string Reason);

/// <summary>The resources this client is granted (replaced live as policy changes), matched to destinations the way the connector matches them.</summary>
public sealed class ClientRoutes
{
    // The client holds only its own grants, so one stand-in identity is granted all of them.
    private const string Self = "device/self";

    private volatile Snapshot _snapshot;
    private volatile bool _splitTunnel;
    private readonly TaskCompletionSource _known = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public ClientRoutes(IEnumerable<ResourceGrant>? resources = null, bool splitTunnel = false)
    {
        _snapshot = Build(resources ?? []);
        _splitTunnel = splitTunnel;
        if (resources is not null)
        {
            _known.TrySetResult();
        }
    }

    /// <summary>Completes once the grants are known (after sign-in); until then an empty table means "not yet", not "nothing".</summary>
    public Task Known => _known.Task;

    /// <summary>When on, destinations no resource covers go directly from this device instead of being refused. Off by default.</summary>
    public bool SplitTunnel
    {
        get => _splitTunnel;
        set => _splitTunnel = value;
    }

    public IReadOnlyList<ResourceGrant> Resources => _snapshot.Resources;

    /// <summary>Grants that were left out because they do not parse.</summary>
    public IReadOnlyList<string> Problems => _snapshot.Table.Problems;

    /// <summary>Replaces the granted resources; flows already open keep going (the connector enforces revocation).</summary>
    public void Update(IEnumerable<ResourceGrant> resources)
    {
        ArgumentNullException.ThrowIfNull(resources);
        _snapshot = Build(resources);
        _known.TrySetResult();
    }

    /// <summary>
    /// Routes like <see cref="Match"/>, first waiting for the grants when sign-in is still under way (an application may connect
    /// before it completes); when <paramref name="bound"/> ends the wait, the flow is refused as not signed in within <paramref name="wait"/>.
    /// </summary>
    public async Task<RouteDecision> MatchWhenKnownAsync(string host, int port, FlowProtocol protocol, TimeSpan wait, CancellationToken bound)
    {
        if (!Known.IsCompleted)
        {
            await Known.WaitAsync(bound).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
            if (!Known.IsCompleted)
            {
                return new RouteDecision(RouteKind.Refused, null, FlowStatus.Unreachable, $"the client has not signed in to the controller within {wait.TotalSeconds:0.#} s");
            }
        }
        return Match(host, port, protocol);
    }

    /// <summary>Routes <paramref name="host"/>:<paramref name="port"/>: the most specific granted resource, else direct or refused.</summary>
    public RouteDecision Match(string host, int port, FlowProtocol protocol)
    {
        var decision = _snapshot.Table.Check(Self, protocol, host, port);
        return decision.Status switch
        {
            FlowStatus.Ok => new RouteDecision(RouteKind.Ferry, decision.Resource, FlowStatus.Ok, decision.Message),
            FlowStatus.NoSuchResource when _splitTunnel => new RouteDecision(RouteKind.Direct, null, FlowStatus.Ok, $"{decision.Message}; split tunnelling sends it directly"),
            FlowStatus.NoSuchResource => new RouteDecision(
                RouteKind.Refused, null, FlowStatus.NoSuchResource, $"{decision.Message} among the resources you are granted (split tunnelling is off)"),
            _ => new RouteDecision(RouteKind.Refused, decision.Resource, decision.Status, decision.Message),
        };
    }

    private static Snapshot Build(IEnumerable<ResourceGrant> resources)
    {
        var list = resources.ToArray();
        return new Snapshot(list, new AccessTable(list.Select(r => new AccessEntry(Self, r))));
    }

    private sealed record Snapshot(ResourceGrant[] Resources, AccessTable Table);
}
