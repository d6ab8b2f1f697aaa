using Ferry.Controller.Storage;
using Ferry.Core.ControlPlane;

namespace Ferry.Controller.Policy;

/// <summary>Answers "what may this identity reach": exactly what a policy grants to one of its groups or to the service account, nothing else.</summary>
public sealed class PolicyEvaluator(ControllerStore store, Tokens.TokenService tokens, TimeProvider time)
{
    /// <summary>The online connectors of each network the grants reach, for a client to open flows through.</summary>
    public async Task<NetworkConnectors[]> ConnectorsForAsync(IEnumerable<ResourceGrant> grants, CancellationToken ct)
    {
        var now = time.GetUtcNow();
        var networks = grants.Select(g => g.Network).Distinct(StringComparer.Ordinal).Order(StringComparer.Ordinal).ToArray();
        var all = await store.ListDaemonsAsync(Core.Security.PeerIdentity.Connector, null, ct);
        return [.. networks.Select(n => new NetworkConnectors(n, [.. all
            .Where(d => d.NetworkName == n && d.State == "online" && tokens.LiveSessionDescription(d, now) is not null)
            .Select(d => new Core.Security.PeerIdentity(Core.Security.PeerIdentity.Connector, d.Id).ToString())
            .Order(StringComparer.Ordinal)]))];
    }

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
