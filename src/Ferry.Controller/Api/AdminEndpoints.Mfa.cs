using Ferry.Controller.Sessions;
using Ferry.Controller.Storage;
using Ferry.Core.Api;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;

namespace Ferry.Controller.Api;

public static partial class AdminEndpoints
{
    /// <summary>Seconds without traffic a network's second factor lasts when the operator names none.</summary>
    public const int DefaultMfaIdleTimeoutSeconds = 900;

    private const int MinMfaIdleTimeoutSeconds = 3;
    private const int MaxMfaIdleTimeoutSeconds = 7 * 24 * 3600;

    private static void MapUserMfa(RouteGroupBuilder api)
    {
        api.MapGet("/users/{user}", ShowUserAsync);
        api.MapPost("/users/{user}/mfa", EnrolUserMfaAsync);
        api.MapDelete("/users/{user}/mfa", ResetUserMfaAsync);
    }

    private static async Task<IResult> ShowUserAsync(string user, ControllerStore store, CancellationToken ct)
    {
        var row = await store.FindUserAsync(user, ct) ?? throw ApiException.NotFound("user", user);
        var groups = (await store.ListMembershipsAsync(ct)).Where(m => m.UserId == row.Id).Select(m => m.GroupName).ToArray();
        var totp = await store.GetUserTotpAsync(row.Id, ct);
        var events = await store.ListEventsAsync(row.Id, 50, ct);
        return Results.Ok(new UserDetailView(row.Id, row.Name, groups, Time(row.CreatedAt), totp is not null, totp is null ? null : Time(totp.EnrolledAt),
            [.. events.Select(e => new EventView(Time(e.At), e.Kind, e.Message))]));
    }

    /// <summary>Enrols a TOTP second factor for a user; the secret is generated here and shown only in this answer.</summary>
    private static async Task<IResult> EnrolUserMfaAsync(string user, ControllerStore store, TimeProvider time, HttpContext http, CancellationToken ct)
    {
        var row = await store.FindUserAsync(user, ct) ?? throw ApiException.NotFound("user", user);
        if (await store.GetUserTotpAsync(row.Id, ct) is not null)
        {
            // Replacing silently would let anyone with the admin key take over a factor the user relies on without anyone noticing.
            throw ApiException.Conflict($"user '{row.Name}' has a second factor enrolled already; 'ferry admin user mfa reset {row.Name}' removes it, then enrol again");
        }
        var secret = Core.Security.Totp.NewSecret();
        await store.SetUserTotpAsync(row.Id, Core.Security.Totp.ToBase32(secret), Now(time), ct);
        await AuditAsync(http, store, time, "user.mfa-enrol", row.Name, ct);
        return Results.Created($"/api/v1/users/{row.Id}", new UserMfaEnrolled(row.Name, Core.Security.Totp.ToBase32(secret), Core.Security.Totp.ProvisioningUri("Ferry", row.Name, secret)));
    }

    /// <summary>Removes a user's second factor (a lost phone): its live second factors end at once, and networks that require one lock until it is enrolled again.</summary>
    private static async Task<IResult> ResetUserMfaAsync(string user, ControllerStore store, SessionRegistry sessions, TimeProvider time, HttpContext http, CancellationToken ct)
    {
        var row = await store.FindUserAsync(user, ct) ?? throw ApiException.NotFound("user", user);
        if (await store.GetUserTotpAsync(row.Id, ct) is null)
        {
            throw ApiException.Conflict($"user '{row.Name}' has no second factor enrolled; 'ferry admin user mfa enrol {row.Name}' enrols one");
        }
        await store.SetUserTotpAsync(row.Id, null, Now(time), ct);
        await AuditAsync(http, store, time, "user.mfa-reset", row.Name, ct);
        sessions.NotifyPolicyChanged();
        return Results.NoContent();
    }

    /// <summary>The idle threshold a create or update asks for, checked; null when the network is not to require a second factor.</summary>
    private static long? MfaSetting(bool requireMfa, int? idleTimeoutSeconds, long? current)
    {
        if (!requireMfa)
        {
            if (idleTimeoutSeconds is not null)
            {
                throw ApiException.BadRequest("an MFA idle timeout applies only to a network that requires a second factor: add --require-mfa");
            }
            return null;
        }
        var seconds = idleTimeoutSeconds ?? current ?? DefaultMfaIdleTimeoutSeconds;
        if (seconds is < MinMfaIdleTimeoutSeconds or > MaxMfaIdleTimeoutSeconds)
        {
            throw ApiException.BadRequest($"MFA idle timeout {seconds} s is out of range: give {MinMfaIdleTimeoutSeconds} to {MaxMfaIdleTimeoutSeconds} seconds (a second factor lapses after that long without traffic)");
        }
        return seconds;
    }
}
