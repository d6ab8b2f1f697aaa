using Microsoft.Extensions.Logging;

namespace Ferry.Connector;

internal static partial class Log
{
    [LoggerMessage(100, LogLevel.Information, "Connector {Name} ({Id}) starting; controller {Controller} trusted by {Trust}")]
    public static partial void Starting(ILogger logger, string name, string id, Ferry.Core.ControlPlane.ControllerEndpoints controller, string trust);

    [LoggerMessage(105, LogLevel.Information, "Certificate received, valid until {NotAfter:u}")]
    public static partial void CertificateReceived(ILogger logger, DateTimeOffset notAfter);

    [LoggerMessage(106, LogLevel.Information, "STUN discovery {Status}: mapped address {Mapped} (answered: {Relays}) {Note}")]
    public static partial void StunResult(ILogger logger, string status, string mapped, string relays, string note);

    [LoggerMessage(107, LogLevel.Information, "Data plane on UDP {Endpoint} (QUIC and STUN)")]
    public static partial void DataPlane(ILogger logger, string endpoint);

    [LoggerMessage(108, LogLevel.Information, "Access table: {Resources} resources, {Owners} owners with grants")]
    public static partial void AccessChanged(ILogger logger, int resources, int owners);

    [LoggerMessage(109, LogLevel.Warning, "Relay ticket for {Peer} not bound: {Reason}")]
    public static partial void TicketFailed(ILogger logger, string peer, string reason);

    [LoggerMessage(110, LogLevel.Warning, "Client connection refused: {Reason}")]
    public static partial void HandshakeFailed(ILogger logger, string reason);

    [LoggerMessage(111, LogLevel.Information, "Client {Identity} of {Owner} connected")]
    public static partial void ClientConnected(ILogger logger, string identity, string owner);

    [LoggerMessage(113, LogLevel.Information, "Flow of {Owner} to {Destination} revoked: {Reason}")]
    public static partial void FlowRevoked(ILogger logger, string owner, string destination, string reason);

    [LoggerMessage(112, LogLevel.Information, "Client {Identity} disconnected: {Reason}")]
    public static partial void ClientDisconnected(ILogger logger, string identity, string reason);

    [LoggerMessage(114, LogLevel.Information, "Network {Network}: names resolve via {Dns}{Exit}")]
    public static partial void NetworkSettings(ILogger logger, string network, string dns, string exit);

    [LoggerMessage(115, LogLevel.Warning, "Network setting ignored: {Problem}")]
    public static partial void NetworkSettingIgnored(ILogger logger, string problem);

    [LoggerMessage(116, LogLevel.Information, "Device {Identity} revoked: closing its connection and flows")]
    public static partial void DeviceRevoked(ILogger logger, string identity);

    [LoggerMessage(117, LogLevel.Warning, "Resource {Resource} is {Status} from here: {Detail}")]
    public static partial void ResourceProblem(ILogger logger, string resource, string status, string detail);

    [LoggerMessage(118, LogLevel.Information, "Resource {Resource} is reachable again from here")]
    public static partial void ResourceRecovered(ILogger logger, string resource);

    [LoggerMessage(130, LogLevel.Debug, "Client {Identity}: {Unknown} datagrams for no live UDP flow and {Malformed} malformed ones were dropped")]
    public static partial void DatagramsDropped(ILogger logger, string identity, long unknown, long malformed);
}
