using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.Logging;

namespace Ferry.Relay;

/// <summary>Source-generated log messages of the relay server, one line per event, with stable event ids.</summary>
public sealed partial class RelayServer
{
    [LoggerMessage(EventId = 1, Level = LogLevel.Information, Message = "{Relay} listening on {Endpoint}")]
    private static partial void LogListening(ILogger logger, string relay, IPEndPoint endpoint);

    [LoggerMessage(EventId = 2, Level = LogLevel.Information, Message = "{Relay} link up: {Peer} from {Remote}")]
    private static partial void LogLinkUp(ILogger logger, string relay, string peer, IPEndPoint? remote);

    [LoggerMessage(EventId = 3, Level = LogLevel.Information, Message = "{Relay} link down: {Peer} from {Remote}, reason {Reason}: {Detail}")]
    private static partial void LogLinkDown(ILogger logger, string relay, string peer, IPEndPoint? remote, RelayRefusal reason, string detail);

    [LoggerMessage(EventId = 4, Level = LogLevel.Warning, Message = "{Relay} handshake refused from {Remote}, reason {Reason}: {Detail}")]
    private static partial void LogHandshakeRefused(ILogger logger, string relay, IPEndPoint? remote, RelayRefusal reason, string detail);

    [LoggerMessage(EventId = 5, Level = LogLevel.Information, Message = "{Relay} bind ok: {Peer} to {RemotePeer} on channel {Channel}, ticket {TicketId}")]
    internal static partial void LogBindOk(ILogger logger, string relay, string peer, string remotePeer, ushort channel, string ticketId);

    [LoggerMessage(EventId = 6, Level = LogLevel.Warning, Message = "{Relay} bind refused: {Peer}, reason {Reason}: {Detail}")]
    internal static partial void LogBindRefused(ILogger logger, string relay, string peer, RelayRefusal reason, string detail);

    [LoggerMessage(EventId = 7, Level = LogLevel.Warning, Message = "{Relay} protocol error from {Peer}: {Detail}; closing its link")]
    internal static partial void LogProtocolError(ILogger logger, string relay, string peer, string detail);

    [LoggerMessage(EventId = 8, Level = LogLevel.Warning, Message = "{Relay} accept failed: {Error}")]
    private static partial void LogAcceptFailed(ILogger logger, string relay, SocketError error);

    [LoggerMessage(EventId = 9, Level = LogLevel.Error, Message = "{Relay} housekeeping tick failed")]
    private static partial void LogSweepFailed(ILogger logger, string relay, Exception exception);

    [LoggerMessage(EventId = 11, Level = LogLevel.Error, Message = "{Relay} link of {Peer} failed unexpectedly; closing it")]
    internal static partial void LogLinkFailed(ILogger logger, string relay, string peer, Exception exception);

    [LoggerMessage(EventId = 10, Level = LogLevel.Information, Message = "{Relay} stopped")]
    private static partial void LogStopped(ILogger logger, string relay);
}
