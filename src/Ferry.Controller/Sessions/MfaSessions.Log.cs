using Microsoft.Extensions.Logging;

namespace Ferry.Controller.Sessions;

public sealed partial class MfaSessions
{
    // Ids 400-409: second factors. Codes and secrets never appear here.
    private static partial class Log
    {
        [LoggerMessage(400, LogLevel.Information, "Second factor of {Identity} (user {User}) started for network {Network}; it ends after {IdleSeconds} s without traffic")]
        public static partial void MfaStarted(ILogger logger, string identity, string user, string network, long idleSeconds);

        [LoggerMessage(401, LogLevel.Information, "Second factor of {Identity} for network {Network} ended: {Reason}")]
        public static partial void MfaEnded(ILogger logger, string identity, string network, string reason);

        [LoggerMessage(402, LogLevel.Warning, "Second factor of {Identity} (user {User}) refused: {Reason}")]
        public static partial void MfaFailed(ILogger logger, string identity, string user, string reason);

        [LoggerMessage(403, LogLevel.Warning, "Looking for idle second factors failed, trying again shortly: {Reason}")]
        public static partial void MfaSweepFailed(ILogger logger, string reason);
    }
}
