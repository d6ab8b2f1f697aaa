using System.Net;
using System.Net.Sockets;
using Ferry.Core.Flows;
using Microsoft.Extensions.Logging;

namespace Ferry.Client.Access;

public abstract partial class LoopbackProxy
{
    internal static partial class Log
    {
        [LoggerMessage(500, LogLevel.Information, "Local {Kind} proxy listening on {EndPoint}")]
        public static partial void Listening(ILogger logger, string kind, IPEndPoint endPoint);

        [LoggerMessage(501, LogLevel.Information, "Local {Kind} proxy stopped")]
        public static partial void Stopped(ILogger logger, string kind);

        [LoggerMessage(502, LogLevel.Warning, "Local {Kind} proxy: {Count} connections were still closing after 5 s")]
        public static partial void StopSlow(ILogger logger, string kind, int count);

        [LoggerMessage(503, LogLevel.Warning, "Local {Kind} proxy could not accept a connection: {Error}")]
        public static partial void AcceptFailed(ILogger logger, string kind, SocketError error);

        [LoggerMessage(504, LogLevel.Warning, "Local {Kind} proxy is serving {Max} connections, its limit; closed a new one")]
        public static partial void TooManyConnections(ILogger logger, string kind, int max);

        [LoggerMessage(505, LogLevel.Information, "{Kind} flow to {Destination} opened through {Route}")]
        public static partial void FlowOpened(ILogger logger, string kind, string destination, string route);

        [LoggerMessage(506, LogLevel.Information, "{Kind} flow to {Destination} refused: {Status}, {Reason}")]
        public static partial void FlowRefused(ILogger logger, string kind, string destination, FlowStatus status, string reason);

        [LoggerMessage(507, LogLevel.Debug, "{Kind} flow to {Destination} closed ({Error}), {Up} bytes up, {Down} bytes down")]
        public static partial void FlowClosed(ILogger logger, string kind, string destination, FlowCopyError error, long up, long down);

        [LoggerMessage(508, LogLevel.Information, "{Kind} handshake refused: {Reason}")]
        public static partial void HandshakeRefused(ILogger logger, string kind, string reason);

        [LoggerMessage(509, LogLevel.Debug, "{Kind} connection ended: {Reason}")]
        public static partial void ConnectionFailed(ILogger logger, string kind, string reason);

        [LoggerMessage(510, LogLevel.Error, "{Kind} connection failed unexpectedly")]
        public static partial void ConnectionCrashed(ILogger logger, string kind, Exception exception);
    }
}
