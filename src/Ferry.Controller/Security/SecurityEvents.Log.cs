using Microsoft.Extensions.Logging;

namespace Ferry.Controller.Security;

public sealed partial class SecurityEvents
{
    [LoggerMessage(170, LogLevel.Warning, "Security event {Kind} about {Subject} from {Source}: {Message}")]
    private static partial void LogEvent(ILogger logger, string kind, string subject, string source, string message);

    [LoggerMessage(171, LogLevel.Error, "Security event {Kind} could not be stored: {Error}")]
    private static partial void LogNotStored(ILogger logger, string kind, string error);
}
