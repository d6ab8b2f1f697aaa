using Microsoft.Extensions.Logging;

namespace Ferry.Controller;

// One line per event, with stable ids so operators can alert on them.
internal static partial class Log
{
    [LoggerMessage(1, LogLevel.Information, "Controller listening on {Url} (state in {Database})")]
    public static partial void Listening(ILogger logger, string url, string database);

    [LoggerMessage(10, LogLevel.Information, "{Identity} '{Name}' online from {From} (offset {OffsetMs} ms, host {Hostname}, version {Version})")]
    public static partial void DaemonOnline(ILogger logger, string identity, string name, string from, long offsetMs, string hostname, string version);

    [LoggerMessage(11, LogLevel.Information, "{Identity} '{Name}' offline: {Reason}")]
    public static partial void DaemonOffline(ILogger logger, string identity, string name, string reason);

    [LoggerMessage(12, LogLevel.Warning, "Session refused ({Code}) from {From}: {Reason}")]
    public static partial void SessionRefused(ILogger logger, string code, string from, string reason);

    [LoggerMessage(13, LogLevel.Warning, "{Identity} clock offset {OffsetMs} ms is beyond the warning threshold")]
    public static partial void ClockWarning(ILogger logger, string identity, long offsetMs);

    [LoggerMessage(14, LogLevel.Information, "Certificate issued to {Identity}, valid until {NotAfter:u}")]
    public static partial void CertificateIssued(ILogger logger, string identity, DateTimeOffset notAfter);

    [LoggerMessage(15, LogLevel.Information, "Tokens of {Identity} rotated")]
    public static partial void TokensRotated(ILogger logger, string identity);

    [LoggerMessage(16, LogLevel.Information, "Client {Identity} ({Owner}) connected from {From}")]
    public static partial void ClientOnline(ILogger logger, string identity, string owner, string from);

    [LoggerMessage(17, LogLevel.Information, "Client {Identity} disconnected: {Reason}")]
    public static partial void ClientOffline(ILogger logger, string identity, string reason);

    [LoggerMessage(18, LogLevel.Information, "Relay ticket issued for {Requester} and {Peer}, valid until {NotAfter:u}")]
    public static partial void TicketIssued(ILogger logger, string requester, string peer, DateTimeOffset notAfter);

    [LoggerMessage(19, LogLevel.Warning, "Relay ticket refused for {Requester} and {Peer}: {Reason}")]
    public static partial void TicketRefused(ILogger logger, string requester, string peer, string reason);

    [LoggerMessage(24, LogLevel.Warning, "Direct-path signaling refused from {Requester} to {Peer}: {Reason}")]
    public static partial void SignalRefused(ILogger logger, string requester, string peer, string reason);

    [LoggerMessage(20, LogLevel.Warning, "Token refresh refused ({Code}): {Reason}")]
    public static partial void RefreshRefused(ILogger logger, string code, string reason);

    [LoggerMessage(21, LogLevel.Information, "Admin {Actor}: {Action} {Target}")]
    public static partial void AdminChange(ILogger logger, string actor, string action, string target);

    [LoggerMessage(22, LogLevel.Warning, "Admin API request refused: {Reason} ({Path} from {From})")]
    public static partial void AdminRefused(ILogger logger, string reason, string path, string from);

    [LoggerMessage(23, LogLevel.Warning, "Client sign-in refused for {Who}: {Reason}")]
    public static partial void LoginRefused(ILogger logger, string who, string reason);

    [LoggerMessage(165, LogLevel.Information, "{Identity} is back through this replica; replica {Replica}, which held its session, is gone")]
    public static partial void SessionTakenOver(ILogger logger, string identity, string replica);

    [LoggerMessage(166, LogLevel.Warning, "{Identity} '{Name}' offline: replica {Replica}, which held its session, stopped answering")]
    public static partial void SessionReaped(ILogger logger, string identity, string name, string replica);

    [LoggerMessage(180, LogLevel.Error, "{Method} {Path} failed: the database did not complete it ({Error})")]
    public static partial void DatabaseRequestFailed(ILogger logger, string method, string path, string error);
}
