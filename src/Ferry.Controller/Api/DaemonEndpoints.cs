using Ferry.Controller.Policy;
using Ferry.Controller.Storage;
using Ferry.Controller.Tokens;
using Ferry.Core.Api;
using Ferry.Core.Security;
using Ferry.Core.Tokens;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.Logging;

namespace Ferry.Controller.Api;

/// <summary>Endpoints daemons and clients call with their own credentials (not the admin key): token refresh and client sign-in.</summary>
public static class DaemonEndpoints
{
    public static void MapDaemonApi(this IEndpointRouteBuilder app)
    {
        app.MapPost("/v1/daemon/refresh", RefreshAsync);
        app.MapPost("/v1/client/login", LoginAsync);
    }

    private static async Task<IResult> RefreshAsync(TokenRefreshRequest request, TokenService tokens, Security.SecurityEvents security, HttpContext http, ILoggerFactory loggers, CancellationToken ct)
    {
        if (string.IsNullOrWhiteSpace(request.RefreshToken))
        {
            throw ApiException.BadRequest("refreshToken is required");
        }
        var (issued, refusal, daemon) = await tokens.RefreshAsync(request.RefreshToken, ct);
        if (refusal is not null || issued is null || daemon is null)
        {
            Log.RefreshRefused(loggers.CreateLogger("Ferry.Controller.Tokens"), refusal!.Code, refusal.Message);
            ControllerMetrics.Refused(refusal.Code, "refresh");
            if (Security.SecurityEvents.KindOfRefusal(refusal.Code) is { } kind)
            {
                await security.RecordAsync(kind, daemon?.Id ?? "unknown", $"token refresh refused ({refusal.Code}): {refusal.Message}", SourceOf(http), CancellationToken.None);
            }
            return Results.Problem(statusCode: refusal.Status, title: refusal.Code, detail: refusal.Message);
        }
        return Results.Ok(new TokenFile
        {
            Kind = daemon.Kind,
            Id = daemon.Id,
            Name = daemon.Name,
            Network = daemon.NetworkName,
            AccessToken = issued.AccessToken,
            AccessTokenExpiresAt = issued.AccessExpiresAt,
            RefreshToken = issued.RefreshToken,
        });
    }

    private static string? SourceOf(HttpContext http) => http.Connection.RemoteIpAddress is { } ip ? (ip.IsIPv4MappedToIPv6 ? ip.MapToIPv4() : ip).ToString() : null;

    private static async Task<IResult> LoginAsync(ClientLoginRequest request, ControllerStore store, PolicyEvaluator policy, ControllerOptions options, TimeProvider time, Security.SecurityEvents security,
        Security.SignInThrottle throttle, HttpContext http, ILoggerFactory loggers, CancellationToken ct)
    {
        var logger = loggers.CreateLogger("Ferry.Controller.Clients");
        // Keys are long random secrets, guessed by no one; the address limit still stops a flood. Passwords also count per user.
        var account = string.IsNullOrEmpty(request.ServiceAccountKey) ? request.User : null;
        if (await throttle.RefusalAsync(Security.SecurityEvents.ClientLoginFailed, account, SourceOf(http), ct) is { } throttled)
        {
            await security.RecordAsync(Security.SecurityEvents.SignInThrottled, account ?? "service-account", $"client sign-in refused unchecked: {throttled}", SourceOf(http), CancellationToken.None);
            http.Response.Headers.RetryAfter = ((int)Security.SignInThrottle.Window.TotalSeconds).ToString(System.Globalization.CultureInfo.InvariantCulture);
            return Results.Problem(statusCode: 429, title: "Sign-in refused", detail: throttled);
        }
        string ownerKind, ownerId;
        if (!string.IsNullOrEmpty(request.ServiceAccountKey))
        {
            var serviceAccount = await store.FindServiceAccountByKeyAsync(TokenFormat.Hash(request.ServiceAccountKey), ct);
            if (serviceAccount is null)
            {
                Log.LoginRefused(logger, "a service account", "unknown key");
                await security.RecordAsync(Security.SecurityEvents.ClientLoginFailed, "service-account", "client sign-in refused: unknown service account key", SourceOf(http), CancellationToken.None);
                return Results.Problem(statusCode: 401, title: "Sign-in refused", detail: "service account key is not valid (it may have been removed)");
            }
            (ownerKind, ownerId) = ("service-account", serviceAccount.Id);
        }
        else if (!string.IsNullOrEmpty(request.User))
        {
            var user = await store.FindUserAsync(request.User, ct);
            // One answer for unknown user and wrong password, so sign-in does not reveal which users exist.
            if (user is null || !PasswordHasher.Verify(request.Password ?? "", user.PasswordHash))
            {
                Log.LoginRefused(logger, request.User, "wrong user name or password");
                await security.RecordAsync(Security.SecurityEvents.ClientLoginFailed, request.User, user is null ? "client sign-in refused: no such user" : "client sign-in refused: wrong password", SourceOf(http), CancellationToken.None);
                return Results.Problem(statusCode: 401, title: "Sign-in refused", detail: "user name or password is wrong");
            }
            (ownerKind, ownerId) = ("user", user.Id);
        }
        else
        {
            throw ApiException.BadRequest("sign in with a user and password, or a service account key");
        }
        var deviceToken = TokenFormat.New(TokenFormat.DevicePrefix);
        var now = time.GetUtcNow();
        var device = new DeviceRow
        {
            Id = TokenFormat.NewId("dv_"),
            Name = string.IsNullOrWhiteSpace(request.DeviceName) ? "device" : request.DeviceName[..Math.Min(request.DeviceName.Length, 63)],
            OwnerKind = ownerKind,
            OwnerId = ownerId,
            TokenHash = TokenFormat.Hash(deviceToken),
            TokenExpiresAt = now.Add(options.DeviceTokenLifetime).ToUnixTimeMilliseconds(),
            CreatedAt = now.ToUnixTimeMilliseconds(),
        };
        await store.InsertDeviceAsync(device, ct);
        var grants = await policy.GrantsForAsync(ownerKind, ownerId, null, ct);
        return Results.Ok(new ClientLoginResult(device.Id, new PeerIdentity(PeerIdentity.Device, device.Id).ToString(), deviceToken, DateTimeOffset.FromUnixTimeMilliseconds(device.TokenExpiresAt), grants));
    }
}
