using System.Diagnostics.Metrics;
using Ferry.Controller.Storage;
using Microsoft.Extensions.Logging;

namespace Ferry.Controller.Security;

/// <summary>
/// Records security events (refused tokens, sessions, sign-ins and API keys) in the database, where
/// GET /api/v1/security-events and 'ferry admin security-events' find them, with a log line and a metric for each.
/// </summary>
/// <remarks>
/// Callers pass what happened in words, never the credential that was presented: the message is stored and shown to
/// operators as it is.
/// </remarks>
public sealed partial class SecurityEvents(ControllerStore store, TimeProvider time, ILogger<SecurityEvents> logger)
{
    /// <summary>A rotated (already used) refresh token presented again.</summary>
    public const string TokenReuse = "token-reuse";

    /// <summary>A daemon's tokens presented by a second process while the first holds the session.</summary>
    public const string TokenInUse = "token-in-use";

    /// <summary>A session refused because the daemon's or device's clock is beyond the tolerance.</summary>
    public const string ClockRefused = "clock-refused";

    /// <summary>An unknown, expired or replaced daemon or device token.</summary>
    public const string TokenRefused = "token-refused";

    /// <summary>A console sign-in with an unknown operator, a wrong password, or a wrong or reused TOTP code.</summary>
    public const string ConsoleLoginFailed = "console-login-failed";

    /// <summary>A client sign-in with a wrong user name or password, or an unknown service account key.</summary>
    public const string ClientLoginFailed = "client-login-failed";

    /// <summary>A wrong admin API key.</summary>
    public const string ApiKeyRefused = "api-key-refused";

    /// <summary>A failed second factor of a user sign-in.</summary>
    public const string MfaFailed = "mfa-failed";

    /// <summary>A sign-in refused unchecked, after too many failures for its account or from its address.</summary>
    public const string SignInThrottled = "sign-in-throttled";

    private static readonly Counter<long> Recorded = ControllerMetrics.Meter.CreateCounter<long>("ferry.controller.security_events",
        description: "Security events recorded, by kind");

    /// <summary>
    /// Stores one event. <paramref name="subject"/> names what the attempt was about (a daemon or device id, an operator or
    /// user name, "admin-api"); <paramref name="source"/> is the address it came from. Never throws for a storage failure:
    /// the refusal it accompanies must still be answered, so that failure is logged instead.
    /// </summary>
    public async Task RecordAsync(string kind, string subject, string message, string? source = null, CancellationToken ct = default)
    {
        Recorded.Add(1, new KeyValuePair<string, object?>("kind", kind));
        LogEvent(logger, kind, subject, source ?? "-", message);
        try
        {
            await store.AddSecurityEventAsync(new SecurityEventRow
            {
                At = time.GetUtcNow().ToUnixTimeMilliseconds(),
                Kind = Truncate(kind, 64),
                Subject = Truncate(subject, 256),
                Source = source is null ? null : Truncate(source, 64),
                Message = Truncate(message, 2000),
            }, ct);
        }
        catch (Exception e) when (e is System.Data.Common.DbException or TimeoutException or OperationCanceledException or InvalidOperationException)
        {
            LogNotStored(logger, kind, e.Message);
        }
    }

    /// <summary>The event kind a session or refresh refusal code is recorded under; null for refusals that are no security matter (a protocol error).</summary>
    public static string? KindOfRefusal(string code) => code switch
    {
        "in-use" => TokenInUse,
        "token-reused" => TokenReuse,
        "clock-skew" => ClockRefused,
        "unknown-token" or "token-expired" or "token-replaced" or "unknown-daemon" => TokenRefused,
        _ => null,
    };

    private static string Truncate(string value, int max) => value.Length <= max ? value : value[..max];
}
