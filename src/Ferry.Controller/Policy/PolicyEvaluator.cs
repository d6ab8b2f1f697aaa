using Ferry.Controller.Storage;
using Ferry.Core.ControlPlane;

namespace Ferry.Controller.Policy;

/// <summary>Answers "what may this identity reach": exactly what a policy grants to one of its groups or to the service account, nothing else.</summary>
/// <remarks>
/// A network that requires a second factor adds one condition, per device: a live second factor for that network (given with
/// 'ferry client mfa', ended after the network's inactivity threshold). Its grants stay visible to the client, marked locked with
/// the reason, and its connectors' access table names only the devices that hold one.
/// </remarks>
public sealed class PolicyEvaluator(ControllerStore store, TimeProvider time)
{
    /// <summary>What <paramref name="ownerKind"/>/<paramref name="ownerId"/> is granted; with <paramref name="deviceId"/>, grants its device may not use yet are marked locked.</summary>
    public async Task<ResourceGrant[]> GrantsForAsync(string ownerKind, string ownerId, string? deviceId, CancellationToken ct)
    {
        var rows = await store.ListGrantedResourcesAsync(ownerKind, ownerId, ct);
        var mfaNetworks = (await store.ListNetworksAsync(ct)).Where(n => n.MfaIdleTimeoutS is not null).ToDictionary(n => n.Id, StringComparer.Ordinal);
        var locks = new Dictionary<string, string?>(StringComparer.Ordinal);
        foreach (var network in rows.Select(r => r.NetworkId).Distinct().Where(mfaNetworks.ContainsKey))
        {
            locks[network] = deviceId is null ? null : await SecondFactorRefusalAsync(deviceId, ownerKind, ownerId, mfaNetworks[network], ct);
        }
        return [.. rows.Select(r => new ResourceGrant(r.Id, r.Name, r.NetworkName, r.Address, r.Tcp, r.Udp, locks.GetValueOrDefault(r.NetworkId)))];
    }

    /// <summary>What a connector of <paramref name="networkId"/> enforces: its network's resources and each owner's grants among them (each device's, when the network requires a second factor).</summary>
    public async Task<AccessMessage> AccessForNetworkAsync(string networkId, CancellationToken ct)
    {
        var resources = await store.ListResourcesAsync(networkId, ct);
        var grants = await store.ListNetworkGrantsAsync(networkId, ct);
        var revoked = await store.ListRevokedDevicesAsync(time.GetUtcNow().ToUnixTimeMilliseconds(), ct);
        var network = await store.FindNetworkAsync(networkId, ct);
        var byOwner = grants.GroupBy(g => g.Owner).ToDictionary(g => g.Key, g => g.Select(x => x.ResourceId).Distinct().Order(StringComparer.Ordinal).ToArray(), StringComparer.Ordinal);
        var holders = byOwner;
        if (network?.MfaIdleTimeoutS is { } idle)
        {
            // Only devices holding a live second factor here are granted, each with its owner's grants.
            var cutoff = time.GetUtcNow().ToUnixTimeMilliseconds() - (idle * 1000);
            holders = new Dictionary<string, string[]>(StringComparer.Ordinal);
            foreach (var (deviceId, owner) in await store.ListMfaDevicesOfNetworkAsync(networkId, cutoff, ct))
            {
                if (byOwner.TryGetValue(owner, out var ids))
                {
                    holders[$"device/{deviceId}"] = ids;
                }
            }
        }
        return new AccessMessage(
            [.. resources.Select(r => new ResourceGrant(r.Id, r.Name, r.NetworkName, r.Address, r.Tcp, r.Udp))],
            [.. holders.OrderBy(h => h.Key, StringComparer.Ordinal).Select(h => new OwnerGrants(h.Key, h.Value))],
            [.. revoked],
            network is null ? null : new NetworkSettings(network.Name, network.DnsServer, network.IsExit != 0, network.MfaIdleTimeoutS is not null));
    }

    /// <summary>
    /// Why device <paramref name="deviceId"/> may not use network <paramref name="network"/> now for want of a second factor, in
    /// words its user can act on; null when the network requires none or the device holds a live one.
    /// </summary>
    public async Task<string?> SecondFactorRefusalAsync(string deviceId, string ownerKind, string ownerId, NetworkRow network, CancellationToken ct)
    {
        if (network.MfaIdleTimeoutS is not { } idle)
        {
            return null;
        }
        if (ownerKind != "user")
        {
            return $"network '{network.Name}' requires a second factor, which a service account cannot give: grant it resources of a network without --require-mfa";
        }
        var cutoff = time.GetUtcNow().ToUnixTimeMilliseconds() - (idle * 1000);
        if ((await store.ListMfaSessionsAsync(deviceId, network.Id, ct)).Any(s => s.LastActivity >= cutoff))
        {
            return null;
        }
        if (await store.GetUserTotpAsync(ownerId, ct) is null)
        {
            return $"network '{network.Name}' requires a second factor, and this user has none enrolled: ask an administrator to run 'ferry admin user mfa enrol USER'";
        }
        return $"network '{network.Name}' requires a second factor: run 'ferry client mfa' and enter the code from your authenticator app (it lapses after {idle} s without traffic)";
    }
}
