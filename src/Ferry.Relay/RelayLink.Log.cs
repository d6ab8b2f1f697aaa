using Microsoft.Extensions.Logging;

namespace Ferry.Relay;

/// <summary>Source-generated log messages of relay links.</summary>
public sealed partial class RelayLink
{
    [LoggerMessage(EventId = 101, Level = LogLevel.Information, Message = "{Peer} link up to {Relay} at {Endpoint}")]
    private static partial void LogLinkUp(ILogger logger, string peer, string relay, RelayEndpoint endpoint);

    [LoggerMessage(EventId = 102, Level = LogLevel.Information, Message = "{Peer} link to {Relay} at {Endpoint} ended ({State}, {Reason}): {Detail}")]
    private static partial void LogLinkDown(ILogger logger, string peer, string relay, RelayEndpoint endpoint, RelayLinkState state, RelayRefusal reason, string detail);

    [LoggerMessage(EventId = 103, Level = LogLevel.Warning, Message = "{Peer} ticket refused by {Relay}, reason {Reason}: {Detail}")]
    private static partial void LogBindRefused(ILogger logger, string peer, string relay, RelayRefusal reason, string detail);
}
