using Ferry.Controller.Storage;
using Ferry.Core.Tokens;
using Microsoft.AspNetCore.Antiforgery;
using Microsoft.AspNetCore.Authentication;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace Ferry.Controller.Api;

/// <summary>
/// Guards the admin API and its OpenAPI document: the admin API key, or a signed-in console operator's session (whose
/// changes must also carry the page's anti-forgery token in X-CSRF); only health endpoints and daemon endpoints (which
/// carry their own tokens) pass without either.
/// </summary>
public sealed class AdminAuthenticationMiddleware(RequestDelegate next, ILogger<AdminAuthenticationMiddleware> logger)
{
    public const string ActorItem = "ferry.actor";

    public async Task InvokeAsync(HttpContext context, AdminKey adminKey)
    {
        var path = context.Request.Path;
        if (!path.StartsWithSegments("/api") && !path.StartsWithSegments("/openapi"))
        {
            await next(context);
            return;
        }
        var header = context.Request.Headers.Authorization.ToString();
        var presented = header.StartsWith("Bearer ", StringComparison.Ordinal) ? header["Bearer ".Length..].Trim() : context.Request.Headers["X-Api-Key"].ToString();
        if (presented.Length == 0 && await OperatorOfAsync(context) is { } operatorName)
        {
            if (!HttpMethods.IsGet(context.Request.Method) && !HttpMethods.IsHead(context.Request.Method)
                && !await context.RequestServices.GetRequiredService<IAntiforgery>().IsRequestValidAsync(context))
            {
                Log.AdminRefused(logger, "console request without a valid anti-forgery token", path, context.Connection.RemoteIpAddress?.ToString() ?? "unknown");
                await Results.Problem(statusCode: 400, title: "Bad Request",
                    detail: "this change came without the console page's anti-forgery token (X-CSRF header); reload the console and try again").ExecuteAsync(context);
                return;
            }
            context.Items[ActorItem] = "operator " + operatorName;
            await next(context);
            return;
        }
        if (presented.Length == 0 || !adminKey.Matches(presented))
        {
            var reason = presented.Length == 0 ? "no API key" : "wrong API key";
            Log.AdminRefused(logger, reason, path, context.Connection.RemoteIpAddress?.ToString() ?? "unknown");
            if (presented.Length > 0)
            {
                // Only that a key was wrong, and where: the presented key may be a real secret typed in the wrong place.
                await context.RequestServices.GetRequiredService<Security.SecurityEvents>().RecordAsync(Security.SecurityEvents.ApiKeyRefused, "admin-api",
                    $"admin API request with a wrong API key: {context.Request.Method} {path}", context.Connection.RemoteIpAddress?.ToString(), CancellationToken.None);
            }
            context.Response.Headers.WWWAuthenticate = "Bearer";
            await Results.Problem(statusCode: 401, title: "Unauthorized",
                detail: presented.Length == 0
                    ? "the admin API needs the admin API key: pass --api-key or set FERRY_API_KEY (the controller printed it at first start and wrote it to <data>/admin.key)"
                    : "the admin API key is wrong: use the one in the controller's <data>/admin.key").ExecuteAsync(context);
            return;
        }
        context.Items[ActorItem] = "admin";
        await next(context);
    }

    /// <summary>The console operator whose session cookie came with the request; null without one.</summary>
    private static async Task<string?> OperatorOfAsync(HttpContext context)
    {
        var result = await context.AuthenticateAsync(Console.ConsoleEndpoints.Scheme);
        if (!result.Succeeded)
        {
            return null;
        }
        // The anti-forgery token is bound to the signed-in operator, so the request must carry who that is.
        context.User = result.Principal;
        return result.Principal.Identity?.Name;
    }
}

/// <summary>The admin API key's hash, as stored; the key itself lives only in admin.key and the operator's hands.</summary>
public sealed class AdminKey(string hash)
{
    public bool Matches(string presented) => TokenFormat.FixedTimeEquals(TokenFormat.Hash(presented), hash);

    /// <summary>Creates the key on first start (writing it 0600 to admin.key) and loads its hash on every start.</summary>
    public static async Task<(AdminKey Key, string? Plain)> LoadOrCreateAsync(ControllerStore store, string dataDirectory, CancellationToken ct)
    {
        var file = Path.Combine(dataDirectory, "admin.key");
        var stored = await store.GetSettingAsync("admin_key_hash", ct);
        if (stored is null)
        {
            var plain = TokenFormat.New(TokenFormat.AdminKeyPrefix);
            var winner = await store.GetOrAddSettingAsync("admin_key_hash", TokenFormat.Hash(plain), ct);
            if (winner == TokenFormat.Hash(plain))
            {
                Ferry.Core.Files.AtomicFile.WriteAllText(file, plain + "\n", ownerOnly: true);
                return (new AdminKey(winner), plain);
            }
            stored = winner;
        }
        var key = new AdminKey(stored);
        // Show the key again only if this data folder holds it (a replica on a shared database may not).
        if (File.Exists(file))
        {
            var plain = (await File.ReadAllTextAsync(file, ct)).Trim();
            if (key.Matches(plain))
            {
                return (key, plain);
            }
        }
        return (key, null);
    }
}
