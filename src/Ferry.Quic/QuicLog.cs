using System.Net;
using Microsoft.Extensions.Logging;

namespace Ferry.Quic;

/// <summary>Source-generated log messages of the QUIC stack; event ids are stable.</summary>
internal static partial class QuicLog
{
    [LoggerMessage(EventId = 1, Level = LogLevel.Information, Message = "QUIC endpoint bound to {LocalEndPoint} (accepting: {Accepting})")]
    public static partial void EndpointBound(ILogger logger, IPEndPoint localEndPoint, bool accepting);

    [LoggerMessage(EventId = 2, Level = LogLevel.Information, Message = "QUIC connection {Direction} {RemoteEndPoint}: peer {Identity}, ALPN {Alpn}")]
    public static partial void ConnectionEstablished(ILogger logger, string direction, IPEndPoint remoteEndPoint, string? identity, string alpn);

    [LoggerMessage(EventId = 3, Level = LogLevel.Warning, Message = "QUIC handshake with {RemoteEndPoint} failed: {Reason}")]
    public static partial void HandshakeFailed(ILogger logger, IPEndPoint remoteEndPoint, string reason);

    [LoggerMessage(EventId = 4, Level = LogLevel.Information, Message = "QUIC connection with {RemoteEndPoint} ({Identity}) ended: {Reason}")]
    public static partial void ConnectionClosed(ILogger logger, IPEndPoint remoteEndPoint, string? identity, string reason);

    [LoggerMessage(EventId = 5, Level = LogLevel.Information, Message = "QUIC connection with {Identity} moved from {OldRemote} to {NewRemote}")]
    public static partial void PathChanged(ILogger logger, string? identity, IPEndPoint oldRemote, IPEndPoint newRemote);

    [LoggerMessage(EventId = 6, Level = LogLevel.Debug, Message = "Sent {Kind} to {RemoteEndPoint}")]
    public static partial void StatelessReply(ILogger logger, string kind, IPEndPoint remoteEndPoint);

    [LoggerMessage(EventId = 7, Level = LogLevel.Error, Message = "A QUIC callback failed for the connection with {RemoteEndPoint}")]
    public static partial void CallbackFailed(ILogger logger, IPEndPoint remoteEndPoint, Exception exception);

    [LoggerMessage(EventId = 8, Level = LogLevel.Warning, Message = "Dropped a datagram from {RemoteEndPoint} after an unexpected error")]
    public static partial void DispatchFailed(ILogger logger, IPEndPoint? remoteEndPoint, Exception exception);

    [LoggerMessage(EventId = 9, Level = LogLevel.Information, Message = "QUIC socket {LocalEndPoint}: receive buffer {ReceiveBuffer} bytes, send buffer {SendBuffer} bytes, GSO {Gso}, GRO {Gro}")]
    public static partial void SocketIo(ILogger logger, IPEndPoint localEndPoint, int receiveBuffer, int sendBuffer, bool gso, bool gro);
}
