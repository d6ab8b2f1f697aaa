using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.Logging;

namespace Ferry.Stun;

/// <summary>Log messages of the STUN server.</summary>
public sealed partial class StunServer
{
    private static partial class Log
    {
        [LoggerMessage(EventId = 1, Level = LogLevel.Information, Message = "STUN server listening on {EndPoint}")]
        public static partial void Listening(ILogger logger, IPEndPoint endPoint);

        [LoggerMessage(EventId = 2, Level = LogLevel.Information, Message = "STUN server stopped")]
        public static partial void Stopped(ILogger logger);

        [LoggerMessage(EventId = 3, Level = LogLevel.Debug, Message = "Answered {Remote} with {Length} bytes")]
        public static partial void Answered(ILogger logger, IPEndPoint remote, int length);

        [LoggerMessage(EventId = 4, Level = LogLevel.Debug, Message = "Dropped datagram from {Remote}: {Reason}")]
        public static partial void Dropped(ILogger logger, IPEndPoint remote, StunDropReason reason);

        [LoggerMessage(EventId = 5, Level = LogLevel.Warning, Message = "STUN receive failed: {Error}")]
        public static partial void ReceiveFailed(ILogger logger, SocketError error, Exception exception);

        [LoggerMessage(EventId = 6, Level = LogLevel.Debug, Message = "STUN send failed: {Error}")]
        public static partial void SendFailed(ILogger logger, SocketError error);

        [LoggerMessage(EventId = 7, Level = LogLevel.Error, Message = "Handling a STUN datagram failed")]
        public static partial void HandlingFailed(ILogger logger, Exception exception);
    }
}
