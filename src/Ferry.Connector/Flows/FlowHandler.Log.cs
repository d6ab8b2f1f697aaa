using Ferry.Core.Flows;
using Microsoft.Extensions.Logging;

namespace Ferry.Connector.Flows;

public sealed partial class FlowHandler
{
    private static partial class Log
    {
        [LoggerMessage(400, LogLevel.Information, "Flow {Identity} → {Destination} connected via {Endpoint}")]
        public static partial void FlowConnected(ILogger logger, string identity, string destination, string endpoint);

        [LoggerMessage(401, LogLevel.Information, "Flow {Identity} → {Destination} refused: {Status}, {Reason}")]
        public static partial void FlowRefused(ILogger logger, string identity, string destination, FlowStatus status, string reason);

        [LoggerMessage(402, LogLevel.Information, "Flow {Identity} → {Destination} closed ({Error}), {Up} bytes up, {Down} bytes down {Detail}")]
        public static partial void FlowClosed(ILogger logger, string identity, string destination, FlowCopyError error, long up, long down, string detail);

        [LoggerMessage(403, LogLevel.Information, "Flow {Identity} → {Destination} closed by revocation or shutdown after {Up} bytes up, {Down} bytes down")]
        public static partial void FlowRevoked(ILogger logger, string identity, string destination, long up, long down);

        [LoggerMessage(404, LogLevel.Warning, "Flow from {Identity} has a bad header: {Problem}")]
        public static partial void BadHeader(ILogger logger, string identity, string problem);

        [LoggerMessage(405, LogLevel.Information, "Flow {Identity} → {Destination} broke: {Reason}")]
        public static partial void FlowBroken(ILogger logger, string identity, string destination, string reason);

        [LoggerMessage(406, LogLevel.Information, "Flow {Identity} → {Destination} open via {Endpoint}")]
        public static partial void UdpFlowOpened(ILogger logger, string identity, string destination, string endpoint);

        [LoggerMessage(407, LogLevel.Information,
            "Flow {Identity} → {Destination} closed {End}; {PacketsUp} packets ({BytesUp} bytes) up, {PacketsDown} packets ({BytesDown} bytes) down, {OnStream} over the stream, {Dropped} dropped, {SocketErrors} socket errors")]
        public static partial void UdpFlowClosed(ILogger logger, string identity, string destination, string end, long packetsUp, long bytesUp, long packetsDown, long bytesDown, long onStream, long dropped, long socketErrors);
    }
}
