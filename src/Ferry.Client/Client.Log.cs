using Microsoft.Extensions.Logging;

namespace Ferry.Client;

internal static partial class Log
{
    [LoggerMessage(200, LogLevel.Information, "Signed in as {Who}; device {Identity}")]
    public static partial void SignedIn(ILogger logger, string who, string identity);

    [LoggerMessage(201, LogLevel.Information, "Resources granted now: {Count} ({Names})")]
    public static partial void ResourcesChanged(ILogger logger, int count, string names);

    [LoggerMessage(202, LogLevel.Warning, "Session ended ({Code}): {Reason}; reconnecting in {Delay}")]
    public static partial void SessionEnded(ILogger logger, string code, string reason, TimeSpan delay);

    [LoggerMessage(203, LogLevel.Error, "Refused by the controller ({Code}): {Reason}")]
    public static partial void Refused(ILogger logger, string code, string reason);

    [LoggerMessage(205, LogLevel.Information, "STUN discovery {Status}: mapped address {Mapped} {Note}")]
    public static partial void StunResult(ILogger logger, string status, string mapped, string note);

    [LoggerMessage(206, LogLevel.Information, "{Kind} listening on {Endpoint}")]
    public static partial void Listening(ILogger logger, string kind, string endpoint);

    [LoggerMessage(204, LogLevel.Information, "Local control socket at {Path}")]
    public static partial void ControlSocket(ILogger logger, string path);

    [LoggerMessage(220, LogLevel.Information, "Second factor confirmed: unlocked {Networks}")]
    public static partial void MfaConfirmed(ILogger logger, string networks);

    [LoggerMessage(221, LogLevel.Warning, "Network {Network} is locked: {Reason}")]
    public static partial void NetworkLocked(ILogger logger, string network, string reason);
}
