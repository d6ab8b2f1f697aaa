using Ferry.Controller.Storage;
using Ferry.Core.Api;
using Ferry.Core.Security;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace Ferry.Controller.Sessions;

/// <summary>
/// Devices' second factors for networks that require one: confirmed with a TOTP code, kept alive by the traffic their
/// connectors report, and ended after the network's inactivity threshold.
/// </summary>
/// <remarks>
/// The state lives in the database (mfa_sessions), so a code confirmed on one replica unlocks sessions held on another. Every
/// replica looks every second: it ends the idle ones (a conditional delete, so only one replica ends each and traffic reported
/// meanwhile wins) and re-pushes policy whenever the set of live second factors changed, whoever changed it.
/// </remarks>
public sealed partial class MfaSessions(ControllerStore store, SessionRegistry registry, TimeProvider time, ILogger<MfaSessions> logger, Security.SecurityEvents? security = null)
    : BackgroundService
{
    /// <summary>How often idle second factors are looked for; an idle threshold is honoured to within this (plus one activity report).</summary>
    public static readonly TimeSpan SweepInterval = TimeSpan.FromSeconds(1);

    // Wrong codes a user may send in this window before further codes are refused without being checked.
    private const int MaxFailures = 5;
    private static readonly TimeSpan FailureWindow = TimeSpan.FromMinutes(5);

    private HashSet<(string, string)> _lastSeen = [];

    /// <summary>The outcome of a confirmation: the unlocked networks, or an HTTP status with the reason.</summary>
    public sealed record Confirmation(DeviceMfaResult? Result, int Status, string? Refusal);

    /// <summary>
    /// Checks <paramref name="code"/> against the device owner's TOTP secret (within one 30 s step, each step good once) and, when
    /// it holds, starts the device's second factor for every network that requires one. Wrong and reused codes are refused,
    /// recorded as the user's "mfa-failed" event, and after five within five minutes no code is checked until the window passes.
    /// </summary>
    public async Task<Confirmation> ConfirmAsync(DeviceRow device, string? code, CancellationToken ct)
    {
        var identity = new PeerIdentity(PeerIdentity.Device, device.Id).ToString();
        if (device.OwnerKind != "user")
        {
            return new(null, 400, "this device is signed in as a service account, which has no second factor; networks that require one are for users");
        }
        var totp = await store.GetUserTotpAsync(device.OwnerId, ct);
        if (totp is null)
        {
            return new(null, 409, "your user has no second factor enrolled: ask an administrator to run 'ferry admin user mfa enrol USER', then add the secret it prints to your authenticator app");
        }
        var trimmed = code?.Replace(" ", "", StringComparison.Ordinal) ?? "";
        if (trimmed.Length != 6 || !trimmed.All(char.IsAsciiDigit))
        {
            return new(null, 400, "a second-factor code is the 6 digits your authenticator app shows for Ferry");
        }
        var now = time.GetUtcNow();
        var recentFailures = (await store.ListEventsAsync(device.OwnerId, 50, ct)).Count(e => e.Kind == "mfa-failed" && e.At > (now - FailureWindow).ToUnixTimeMilliseconds());
        if (recentFailures >= MaxFailures)
        {
            await FailAsync(device, identity, "refused unchecked: too many wrong codes", now, ct);
            return new(null, 429, $"too many wrong second-factor codes for your user in the last {FailureWindow.TotalMinutes:0} minutes: wait a few minutes, then try again with a fresh code");
        }
        var secret = Totp.FromBase32(totp.TotpSecret) ?? throw new InvalidOperationException($"the stored TOTP secret of user {device.OwnerId} is not base32");
        var step = Totp.Verify(secret, trimmed, now, totp.TotpLastStep);
        if (step is null || !await store.ClaimUserTotpStepAsync(device.OwnerId, step.Value, ct))
        {
            await FailAsync(device, identity, "wrong or already used code", now, ct);
            return new(null, 401, "the second-factor code is wrong or was already used: wait for the next code in your authenticator app and try again (the device's clock and the phone's must be right to within 30 s)");
        }
        var networks = (await store.ListNetworksAsync(ct)).Where(n => n.MfaIdleTimeoutS is not null).ToArray();
        await store.StartMfaSessionsAsync(device.Id, networks.Select(n => n.Id), now.ToUnixTimeMilliseconds(), ct);
        foreach (var network in networks)
        {
            Log.MfaStarted(logger, identity, device.OwnerId, network.Name, network.MfaIdleTimeoutS!.Value);
        }
        registry.NotifyPolicyChanged();
        return new(new DeviceMfaResult(identity, [.. networks.Select(n => new MfaNetworkView(n.Name, (int)n.MfaIdleTimeoutS!.Value))]), 200, null);
    }

    private async Task FailAsync(DeviceRow device, string identity, string what, DateTimeOffset now, CancellationToken ct)
    {
        // The code itself is never recorded: a near miss would tell a reader of the log most of a valid one.
        Log.MfaFailed(logger, identity, device.OwnerId, what);
        var message = $"second factor from device '{device.Name}' ({identity}) refused: {what}";
        await store.AddEventAsync(device.OwnerId, Security.SecurityEvents.MfaFailed, message, now.ToUnixTimeMilliseconds(), ct);
        if (security is not null)
        {
            await security.RecordAsync(Security.SecurityEvents.MfaFailed, device.OwnerId, message, ct: ct);
        }
    }

    /// <summary>Keeps alive the second factors in network <paramref name="networkId"/> of the devices ("device/dv_…") its connector saw traffic from.</summary>
    public async Task RecordActivityAsync(string networkId, IEnumerable<string> devices, CancellationToken ct)
    {
        var ids = devices.Take(4096)
            .Select(d => PeerIdentity.TryParse(d, out var p) && p.Value.Kind == PeerIdentity.Device ? p.Value.Id : null)
            .OfType<string>().Distinct(StringComparer.Ordinal).ToArray();
        await store.TouchMfaSessionsAsync(networkId, ids, time.GetUtcNow().ToUnixTimeMilliseconds(), ct);
    }

    /// <summary>Ends idle second factors, and re-pushes policy when the live set changed (here or on another replica).</summary>
    public async Task SweepAsync(CancellationToken ct)
    {
        var now = time.GetUtcNow().ToUnixTimeMilliseconds();
        var networks = (await store.ListNetworksAsync(ct)).Where(n => n.MfaIdleTimeoutS is not null).ToDictionary(n => n.Id, StringComparer.Ordinal);
        var live = new HashSet<(string, string)>();
        foreach (var session in await store.ListMfaSessionsAsync(null, null, ct))
        {
            if (!networks.TryGetValue(session.NetworkId, out var network))
            {
                continue;
            }
            var idleBefore = now - (network.MfaIdleTimeoutS!.Value * 1000);
            if (session.LastActivity < idleBefore)
            {
                if (await store.EndIdleMfaSessionAsync(session.DeviceId, session.NetworkId, idleBefore, ct))
                {
                    Log.MfaEnded(logger, $"{PeerIdentity.Device}/{session.DeviceId}", network.Name, $"no traffic for {network.MfaIdleTimeoutS} s (the network's inactivity threshold); a new code is needed");
                }
                continue;
            }
            live.Add((session.DeviceId, session.NetworkId));
        }
        if (!live.SetEquals(_lastSeen))
        {
            _lastSeen = live;
            registry.NotifyPolicyChanged();
        }
    }

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        using var timer = new PeriodicTimer(SweepInterval, time);
        try
        {
            while (await timer.WaitForNextTickAsync(stoppingToken))
            {
                try
                {
                    await SweepAsync(stoppingToken);
                }
                catch (Exception e) when (e is System.Data.Common.DbException or InvalidOperationException or TimeoutException)
                {
                    // The database may be briefly unreachable; the next sweep catches up, since every decision is made from stored times.
                    Log.MfaSweepFailed(logger, e.Message);
                }
            }
        }
        catch (OperationCanceledException)
        {
        }
    }
}
