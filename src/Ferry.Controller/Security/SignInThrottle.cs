using Ferry.Controller.Storage;

namespace Ferry.Controller.Security;

/// <summary>
/// Slows password and key guessing: after too many failed sign-ins for one account, or from one address, within a window,
/// further attempts are refused unchecked until the oldest failure leaves the window. The count comes from the security
/// events every failure already records, so it holds across controller replicas and restarts.
/// </summary>
public sealed class SignInThrottle(ControllerStore store, TimeProvider time)
{
    /// <summary>How far back failures count.</summary>
    public static readonly TimeSpan Window = TimeSpan.FromMinutes(5);

    /// <summary>Failures for one account (a user, an operator) before it is locked for the rest of the window.</summary>
    public const int PerAccount = 5;

    /// <summary>Failures from one address (any accounts, or keys) before it is refused for the rest of the window.</summary>
    public const int PerSource = 20;

    /// <summary>Why this attempt is refused unchecked, for the one who made it; null when it may be checked.</summary>
    public async Task<string?> RefusalAsync(string kind, string? account, string? source, CancellationToken ct)
    {
        var since = (time.GetUtcNow() - Window).ToUnixTimeMilliseconds();
        if (account is not null && await store.CountSecurityEventsAsync(kind, account, null, since, ct) >= PerAccount)
        {
            return $"too many failed sign-ins for this account in the last {Window.TotalMinutes:0} minutes: wait a few minutes and try again (the attempts are in the controller's security events)";
        }
        if (source is not null && await store.CountSecurityEventsAsync(kind, null, source, since, ct) >= PerSource)
        {
            return $"too many failed sign-ins from this address in the last {Window.TotalMinutes:0} minutes: wait a few minutes and try again";
        }
        return null;
    }
}
