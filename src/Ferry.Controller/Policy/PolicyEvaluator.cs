using Ferry.Controller.Storage;
using Ferry.Core.ControlPlane;

namespace Ferry.Controller.Policy;

/// <summary>Answers "what may this identity reach": exactly what a policy grants to one of its groups or to the service account, nothing else.</summary>
public sealed class PolicyEvaluator(ControllerStore store, TimeProvider time)
{
    public async Task<ResourceGrant[]> GrantsForAsync(string ownerKind, string ownerId, CancellationToken ct)
    {
        var rows = await store.ListGrantedResourcesAsync(ownerKind, ownerId, ct);
        return [.. rows.Select(r => new ResourceGrant(r.Id, r.Name, r.NetworkName, r.Address, r.Tcp, r.Udp))];
    }

    /// <summary>What a connector of <paramref name="networkId"/> enforces: its network's resources and each owner's grants among them.</summary>
    public async Task<AccessMessage> AccessForNetworkAsync(string networkId, CancellationToken ct)
    {
        var resources = await store.ListResourcesAsync(networkId, ct);
        var grants = await store.ListNetworkGrantsAsync(networkId, ct);
        var revoked = await store.ListRevokedDevicesAsync(time.GetUtcNow().ToUnixTimeMilliseconds(), ct);
        var network = await store.FindNetworkAsync(networkId, ct);
        return new AccessMessage(
            [.. resources.Select(r => new ResourceGrant(r.Id, r.Name, r.NetworkName, r.Address, r.Tcp, r.Udp))],
            [.. grants.GroupBy(g => g.Owner).OrderBy(g => g.Key, StringComparer.Ordinal).Select(g => new OwnerGrants(g.Key, [.. g.Select(x => x.ResourceId).Distinct().Order(StringComparer.Ordinal)]))],
            [.. revoked],
            network is null ? null : new NetworkSettings(network.Name, network.DnsServer, network.IsExit != 0));
    }
}
