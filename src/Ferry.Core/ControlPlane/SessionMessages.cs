using System.Text.Json;
using System.Text.Json.Serialization;
using System.Text.Json.Serialization.Metadata;

namespace Ferry.Core.ControlPlane;

/// <summary>One message on the long-lived daemon session (a WebSocket carrying one JSON object per text frame).</summary>
[JsonPolymorphic(TypeDiscriminatorPropertyName = "type")]
[JsonDerivedType(typeof(ProbeMessage), "probe")]
[JsonDerivedType(typeof(HelloMessage), "hello")]
[JsonDerivedType(typeof(ProbeReplyMessage), "probe-reply")]
[JsonDerivedType(typeof(WelcomeMessage), "welcome")]
[JsonDerivedType(typeof(RefusedMessage), "refused")]
[JsonDerivedType(typeof(CertificateRequestMessage), "certificate-request")]
[JsonDerivedType(typeof(CertificateIssuedMessage), "certificate")]
[JsonDerivedType(typeof(RotateTokensMessage), "rotate-tokens")]
[JsonDerivedType(typeof(TokensRotatedMessage), "tokens-rotated")]
[JsonDerivedType(typeof(TokensSavedMessage), "tokens-saved")]
[JsonDerivedType(typeof(ResourcesMessage), "resources")]
[JsonDerivedType(typeof(ErrorMessage), "error")]
[JsonDerivedType(typeof(RelayStatusMessage), "relay-status")]
[JsonDerivedType(typeof(RelaysMessage), "relays")]
[JsonDerivedType(typeof(StunReportMessage), "stun-report")]
[JsonDerivedType(typeof(TicketRequestMessage), "ticket-request")]
[JsonDerivedType(typeof(TicketIssuedMessage), "ticket")]
[JsonDerivedType(typeof(AccessMessage), "access")]
[JsonDerivedType(typeof(CandidatesMessage), "candidates")]
[JsonDerivedType(typeof(PathReportMessage), "path-report")]
[JsonDerivedType(typeof(ConnectorStatusMessage), "connector-status")]
[JsonDerivedType(typeof(ActivityMessage), "activity")]
public abstract record SessionMessage
{
    // Handlers trust the declared types, and a peer's JSON is not bound by them: a message missing a non-nullable member, or with
    // null in an array of non-nullable items, is refused here (Deserialize answers null) instead of failing deep in a handler.
    // Nullable members stay optional, and members added later are nullable or have a default, so older peers' messages still bind.
    private static readonly JsonTypeInfo<SessionMessage> s_strict = (JsonTypeInfo<SessionMessage>)new JsonSerializerOptions(SessionJsonContext.Default.Options)
    {
        TypeInfoResolver = SessionJsonContext.Default.WithAddedModifier(RefuseMissingMembers),
    }.GetTypeInfo(typeof(SessionMessage));

    private static void RefuseMissingMembers(JsonTypeInfo info)
    {
        if (info.Kind != JsonTypeInfoKind.Object)
        {
            return;
        }
        var arrays = new List<JsonPropertyInfo>();
        var numbers = new List<JsonPropertyInfo>();
        foreach (var property in info.Properties)
        {
            if (property.PropertyType == typeof(double) || property.PropertyType == typeof(double?))
            {
                numbers.Add(property);
            }
            if (property.PropertyType.IsValueType)
            {
                continue;
            }
            if (!property.IsSetNullable)
            {
                property.IsRequired = true;
            }
            if (property.PropertyType.IsArray && property.PropertyType.GetElementType() is { IsValueType: false } && property.Get is not null)
            {
                arrays.Add(property);
            }
        }
        if (arrays.Count == 0 && numbers.Count == 0)
        {
            return;
        }
        info.OnDeserialized = value =>
        {
            foreach (var property in arrays)
            {
                if (property.Get!(value) is object?[] items && Array.IndexOf(items, null) >= 0)
                {
                    throw new JsonException($"'{property.Name}' holds null where every item must be present");
                }
            }
            // 1e400 reads as infinity, which no JSON writer takes: the controller, storing or passing the message on, would throw.
            foreach (var property in numbers)
            {
                if (property.Get?.Invoke(value) is double number && !double.IsFinite(number))
                {
                    throw new JsonException($"'{property.Name}' is not a finite number");
                }
            }
        };
    }

    public static string Serialize(SessionMessage message) => JsonSerializer.Serialize(message, SessionJsonContext.Default.SessionMessage);

    public static SessionMessage? Deserialize(ReadOnlySpan<byte> utf8)
    {
        try
        {
            return JsonSerializer.Deserialize(utf8, s_strict);
        }
        catch (JsonException)
        {
            return null;
        }
        catch (NotSupportedException)
        {
            // An unknown "type" from a newer peer: ignored rather than tearing down the session.
            return null;
        }
    }
}

/// <summary>Controller → daemon, every heartbeat interval: the controller's clock, so both ends' timestamps give the offset.</summary>
public sealed record ProbeMessage(long Seq, long ControllerTimeMs, int HeartbeatIntervalMs) : SessionMessage;

/// <summary>Daemon → controller, first message: who the host is, and the answer to the first probe.</summary>
public sealed record HelloMessage(
    string Hostname,
    string[] PrivateIps,
    string Version,
    long ProbeSeq,
    long ControllerTimeMs,
    long DaemonTimeMs,
    string? CsrPem) : SessionMessage;

/// <summary>Daemon → controller: the answer to a probe, which doubles as the heartbeat.</summary>
public sealed record ProbeReplyMessage(long Seq, long ControllerTimeMs, long DaemonTimeMs) : SessionMessage;

/// <summary>Controller → daemon: the session is accepted.</summary>
public sealed record WelcomeMessage(string SessionId, string Identity, int HeartbeatIntervalMs, long TimeOffsetMs) : SessionMessage;

/// <summary>Controller → daemon, right before closing: why the session is refused, in words an operator can act on.</summary>
public sealed record RefusedMessage(string Code, string Reason) : SessionMessage;

/// <summary>Daemon → controller: a PKCS#10 request for a fresh short-lived certificate.</summary>
public sealed record CertificateRequestMessage(string CsrPem) : SessionMessage;

/// <summary>Controller → daemon: the signed certificate and the deployment CA that peers check it against.</summary>
public sealed record CertificateIssuedMessage(string CertificatePem, string CaPem, DateTimeOffset NotAfter) : SessionMessage;

/// <summary>Daemon → controller: asks for a new token pair over the session it already holds.</summary>
public sealed record RotateTokensMessage : SessionMessage;

/// <summary>Controller → daemon: the new pair; the old one stays valid until the daemon says it saved this one.</summary>
public sealed record TokensRotatedMessage(string AccessToken, DateTimeOffset AccessTokenExpiresAt, string RefreshToken) : SessionMessage;

/// <summary>Daemon → controller: the rotated pair is on disk; the old pair may now be retired.</summary>
public sealed record TokensSavedMessage(string AccessToken) : SessionMessage;

/// <summary>Controller → client: the resources that policy grants this identity now, and the online connectors of their networks.</summary>
public sealed record ResourcesMessage(ResourceGrant[] Resources, NetworkConnectors[]? Connectors = null) : SessionMessage;

/// <summary>The online connectors of one remote network, as a client chooses among them.</summary>
public sealed record NetworkConnectors(string Network, ConnectorRoute[] Connectors);

/// <summary>
/// One online connector as a client routes to it: its identity ("connector/cn_…"), name, location (a region or LAT,LON;
/// null when the operator set none) and load (the clients it serves now, as it last reported).
/// </summary>
public sealed record ConnectorRoute(string Identity, string Name, string? Location, int Clients);

/// <summary>
/// Connector → controller, when it changes: how loaded the connector is (client connections and flows it serves) and what it
/// found when it checked its network's resources, so the controller can route by load and flag connectors that disagree.
/// </summary>
public sealed record ConnectorStatusMessage(int Clients, int Flows, ResourceCheck[] Resources) : SessionMessage;

/// <summary>
/// Connector → controller, at most once a second while there is traffic: the devices ("device/dv_…") whose flows carried
/// bytes since the last report. Sent only for a network that requires a second factor, whose sessions lapse without traffic.
/// </summary>
public sealed record ActivityMessage(string[] Devices) : SessionMessage;

/// <summary>
/// What one connector found for one resource: "ok" (resolves and answers), "unresolvable" (the name does not resolve),
/// "unreachable" (nothing answers on its port) or "unchecked" (an address range or wildcard, which cannot be checked as one host).
/// </summary>
public sealed record ResourceCheck(string ResourceId, string Status, string? Detail = null);

/// <summary>Either way: a request on the session could not be served; <paramref name="Subject"/> names what it was about (the peer of a ticket request).</summary>
public sealed record ErrorMessage(string Code, string Message, string? Subject = null) : SessionMessage;

/// <summary>Relay → controller, every few seconds: where it listens and how loaded it is.</summary>
public sealed record RelayStatusMessage(string[] TcpEndpoints, string[] StunEndpoints, int Peers, long BytesIn, long BytesOut, long PacketsIn, long PacketsOut, double PacketsPerSecond, long Refused) : SessionMessage;

/// <summary>Controller → connector or client: the relays that are online now, with their TCP and STUN endpoints.</summary>
public sealed record RelaysMessage(RelayInfo[] Relays) : SessionMessage;

/// <summary>A relay as peers see it.</summary>
public sealed record RelayInfo(string Id, string Name, string? Location, string[] Tcp, string[] Stun);

/// <summary>Connector → controller: the outcome of STUN discovery against the relays ("ok" or "failed").</summary>
public sealed record StunReportMessage(string Status, string? MappedAddress, string[] Relays, string? Error) : SessionMessage;

/// <summary>Peer → controller: asks for a relay ticket naming itself and <paramref name="Peer"/>.</summary>
public sealed record TicketRequestMessage(string Peer) : SessionMessage;

/// <summary>Controller → both named peers: a signed relay ticket; relays forward only between the two ends it names.</summary>
public sealed record TicketIssuedMessage(string Peer, string Ticket, DateTimeOffset NotAfter) : SessionMessage;

/// <summary>
/// Signaling for a direct path, either way through the controller: this end's short-term ICE credentials and its candidates.
/// Sent to the controller with <paramref name="Peer"/> naming the other end; the controller forwards it with <paramref name="Peer"/>
/// naming the sender, and only between a device and a connector that policy lets talk. A new <paramref name="Ufrag"/> restarts the
/// search (after a network change); <paramref name="Answer"/> marks the connector's reply, which is never answered again.
/// </summary>
public sealed record CandidatesMessage(string Peer, string Ufrag, string Password, CandidateInfo[] Candidates, bool Answer = false) : SessionMessage;

/// <summary>One address a peer may be reached at on its data-plane socket: "host" (an interface address) or "srflx" (its NAT's, from STUN).</summary>
public sealed record CandidateInfo(string Kind, string Address, uint Priority);

/// <summary>Client → controller: the path to each connector it holds a connection to, for operators (replaced whole).</summary>
public sealed record PathReportMessage(PathStatus[] Paths) : SessionMessage;

/// <summary>
/// The path a client's connection to one connector uses now: "direct" (with its two UDP addresses) or "relayed" (Remote names
/// the relay); round-trip
/// times of the direct and relayed paths as last measured, bytes each way, and why there is no direct path when there is none.
/// </summary>
public sealed record PathStatus(
    string Connector,
    string Kind,
    string? Local,
    string? Remote,
    double? RttMs,
    double? DirectRttMs,
    double? RelayedRttMs,
    long BytesSent,
    long BytesReceived,
    string? DirectFailure,
    double? DirectAfterMs,
    int Migrations);

/// <summary>
/// Controller → connector: the resources of its network and which owners (users, service accounts) may use which; replaced
/// whole on every change. <paramref name="RevokedDevices"/> names removed devices ("device/dv_…") whose certificates have not
/// expired yet, so their connections are closed even though their owner keeps its grants. <paramref name="Network"/> carries
/// the network's settings the connector applies.
/// </summary>
public sealed record AccessMessage(ResourceGrant[] Resources, OwnerGrants[] Grants, string[]? RevokedDevices = null, NetworkSettings? Network = null) : SessionMessage;

/// <summary>
/// A remote network's settings as its connectors apply them: the DNS server that resolves resource names (null: the connector
/// host's own), whether it is an exit network, and whether it requires a second factor. With <paramref name="RequireMfa"/> the
/// access message's grants name devices ("device/dv_…" with a live second factor), not owners, and the connector checks flows
/// by device; a connector that does not know this field finds no owner granted, so it refuses rather than lets through.
/// </summary>
public sealed record NetworkSettings(string Name, string? DnsServer, bool Exit, bool RequireMfa = false);

/// <summary>The resources one owner ("user/us_…" or "service-account/sa_…") is granted.</summary>
public sealed record OwnerGrants(string Owner, string[] ResourceIds);

/// <summary>
/// One resource as a client sees it: where it is and which ports it may use. <paramref name="Locked"/>, when set, says why the
/// controller refuses it to this device right now (its network requires a second factor the device has not given); the client
/// only shows it, the controller and the connector refuse.
/// </summary>
public sealed record ResourceGrant(string Id, string Name, string Network, string Address, string Tcp, string Udp, string? Locked = null);

// RespectNullableAnnotations refuses an explicit null where the type has none; SessionMessage.RefuseMissingMembers does the rest.
[JsonSourceGenerationOptions(JsonSerializerDefaults.Web, DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull, RespectNullableAnnotations = true)]
[JsonSerializable(typeof(SessionMessage))]
internal sealed partial class SessionJsonContext : JsonSerializerContext;
