using Ferry.Controller.CertificateAuthority;
using Ferry.Controller.Policy;
using Ferry.Controller.Storage;
using Ferry.Core.Security;
using Ferry.Relay;

namespace Ferry.Controller.Sessions;

/// <summary>
/// Issues relay tickets only for pairs policy lets talk: a device and a connector of a network holding a resource granted to the
/// device's owner, and, when the network requires a second factor, the device holding a live one.
/// </summary>
public sealed class TicketService(ControllerStore store, DeploymentCertificateAuthority ca, PolicyEvaluator policy, TimeProvider time)
{
    public static readonly TimeSpan Lifetime = TimeSpan.FromHours(1);

    /// <summary>The owner of a device session ("user"/"service-account" and id); null for daemons.</summary>
    public sealed record Requester(PeerIdentity Identity, string? OwnerKind, string? OwnerId);

    public async Task<(RelayTicket? Ticket, string? Refusal)> IssueAsync(Requester requester, string peerText, CancellationToken ct)
    {
        var (pair, refusal) = await AuthorizePairAsync(requester, peerText, ct, requireOnline: true);
        if (pair is null)
        {
            return (null, refusal);
        }
        var ticket = RelayTicket.Issue(ca.SigningKey, pair.Value.Device.ToString(), pair.Value.Connector.ToString(), time.GetUtcNow().Add(Lifetime));
        return (ticket, null);
    }

    /// <summary>
    /// Whether <paramref name="requester"/> and <paramref name="peerText"/> may talk at all (relay tickets, direct-path signaling):
    /// a device and a connector of a network holding a resource granted to the device's owner.
    /// </summary>
    /// <remarks>With <paramref name="requireOnline"/> an offline connector is refused at once, so a client moves on to another instead of waiting for a handshake that cannot come.</remarks>
    public async Task<((PeerIdentity Device, PeerIdentity Connector)? Pair, string? Refusal)> AuthorizePairAsync(Requester requester, string peerText, CancellationToken ct, bool requireOnline = false)
    {
        if (!PeerIdentity.TryParse(peerText, out var peer))
        {
            return (null, $"'{peerText}' is not a peer identity (kind/id)");
        }
        PeerIdentity device, connector;
        string ownerKind, ownerId;
        if (requester.Identity.Kind == PeerIdentity.Device && peer.Value.Kind == PeerIdentity.Connector)
        {
            (device, connector, ownerKind, ownerId) = (requester.Identity, peer.Value, requester.OwnerKind!, requester.OwnerId!);
        }
        else if (requester.Identity.Kind == PeerIdentity.Connector && peer.Value.Kind == PeerIdentity.Device)
        {
            var owner = await store.GetDeviceAsync(peer.Value.Id, ct);
            if (owner is null)
            {
                return (null, $"device '{peer.Value.Id}' does not exist");
            }
            (device, connector, ownerKind, ownerId) = (peer.Value, requester.Identity, owner.OwnerKind, owner.OwnerId);
        }
        else
        {
            return (null, $"relay tickets pair a device with a connector, not {requester.Identity.Kind} with {peer.Value.Kind}");
        }
        var connectorRow = await store.GetDaemonAsync(connector.Id, ct);
        if (connectorRow is null || connectorRow.Kind != PeerIdentity.Connector)
        {
            return (null, $"connector '{connector.Id}' does not exist");
        }
        if (requireOnline && connectorRow.State != "online")
        {
            return (null, $"connector '{connectorRow.Name}' ({connector}) is offline");
        }
        var granted = await store.ListGrantedResourcesAsync(ownerKind, ownerId, ct);
        if (!granted.Any(r => r.NetworkId == connectorRow.NetworkId))
        {
            return (null, $"{device} may not reach {connector}: no resource of network '{connectorRow.NetworkName}' is granted to its owner");
        }
        if (await store.FindNetworkAsync(connectorRow.NetworkId!, ct) is { } network
            && await policy.SecondFactorRefusalAsync(device.Id, ownerKind, ownerId, network, ct) is { } secondFactor)
        {
            return (null, secondFactor);
        }
        return ((device, connector), null);
    }
}
