using Microsoft.Extensions.Logging;

namespace Ferry.Client.Access;

/// <summary>Log events of the client's UDP listeners (UDP forwards and SOCKS5 UDP associations).</summary>
internal static partial class UdpLog
{
    [LoggerMessage(520, LogLevel.Information, "{Kind} flow to {Destination} closed ({End}): {Counters}")]
    public static partial void FlowClosed(ILogger logger, string kind, string destination, string end, string counters);

    [LoggerMessage(521, LogLevel.Information, "{Kind} dropped a datagram: {Reason} (further drops of this kind are only counted)")]
    public static partial void Dropped(ILogger logger, string kind, string reason);

    [LoggerMessage(522, LogLevel.Information, "{Kind} UDP association for {Client} relays on {Relay}")]
    public static partial void Associated(ILogger logger, string kind, string client, string relay);

    [LoggerMessage(523, LogLevel.Information, "{Kind} UDP association on {Relay} ended: {Flows} flows opened, {Dropped} datagrams dropped")]
    public static partial void AssociationEnded(ILogger logger, string kind, string relay, long flows, long dropped);
}
