using System.Net;
using System.Security.Claims;
using Ferry.Controller.Storage;
using Ferry.Controller.Tokens;
using Ferry.Core.Security;
using Microsoft.AspNetCore.Antiforgery;
using Microsoft.AspNetCore.Authentication;
using Microsoft.AspNetCore.Authentication.Cookies;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.DataProtection;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Mvc;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace Ferry.Controller.Console;

/// <summary>The sign-in form's fields.</summary>
public sealed record SignInForm(string? Name, string? Password, string? Code);

/// <summary>
/// The admin console's door: operators sign in with password and TOTP code into a cookie session that ends after
/// <see cref="ControllerOptions.ConsoleIdleTimeout"/> without use, and every form post must carry the anti-forgery token
/// of the page it came from (a page on another site cannot forge one).
/// </summary>
public static partial class ConsoleEndpoints
{
    public const string Scheme = "ferry-console";
    private const string OperatorIdClaim = "ferry:operator";
    private static readonly string UnknownOperatorHash = PasswordHasher.Hash(Guid.NewGuid().ToString());

    /// <summary>Cookie session, anti-forgery and their keys (kept in the data folder, so a restart signs nobody out).</summary>
    public static void AddConsole(this IServiceCollection services, ControllerOptions options, string dataDirectory)
    {
        var keys = Path.Combine(dataDirectory, "console-keys");
        // Like admin.key: readable by the controller's user only. The keys sign session cookies and anti-forgery tokens.
        var folder = OperatingSystem.IsWindows() ? Directory.CreateDirectory(keys) : Directory.CreateDirectory(keys, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        services.AddDataProtection().PersistKeysToFileSystem(folder).SetApplicationName("ferry-controller");
        services.AddAuthentication(Scheme).AddCookie(Scheme, o =>
        {
            o.Cookie.Name = "ferry_console";
            o.Cookie.Path = "/";
            o.Cookie.HttpOnly = true;
            o.Cookie.SecurePolicy = CookieSecurePolicy.Always;
            o.Cookie.SameSite = SameSiteMode.Strict;
            o.ExpireTimeSpan = options.ConsoleIdleTimeout;
            o.SlidingExpiration = true;
            o.LoginPath = "/console/login";
            o.LogoutPath = "/console/logout";
            o.Events.OnValidatePrincipal = async context =>
            {
                // A removed operator's session ends at its next request, not when the cookie runs out.
                var store = context.HttpContext.RequestServices.GetRequiredService<ControllerStore>();
                if (context.Principal?.FindFirstValue(OperatorIdClaim) is not { } id || await store.FindOperatorAsync(id, context.HttpContext.RequestAborted) is null)
                {
                    context.RejectPrincipal();
                    await context.HttpContext.SignOutAsync(Scheme);
                }
            };
        });
        services.AddAuthorization();
        services.AddAntiforgery(o =>
        {
            o.Cookie.Name = "ferry_csrf";
            o.Cookie.Path = "/";
            o.Cookie.SecurePolicy = CookieSecurePolicy.Always;
            o.Cookie.SameSite = SameSiteMode.Strict;
            o.FormFieldName = "csrf";
            o.HeaderName = "X-CSRF";
        });
    }

    public static void MapConsole(this IEndpointRouteBuilder app)
    {
        var console = app.MapGroup("/console");
        console.MapGet("/login", (HttpContext http, IAntiforgery antiforgery) => SignInPage(http, antiforgery, null, StatusCodes.Status200OK));
        console.MapPost("/login", SignInAsync);
        console.MapPost("/logout", async (HttpContext http) =>
        {
            await http.SignOutAsync(Scheme);
            return Results.Redirect("/console/login");
        }).RequireAuthorization(p => p.AddAuthenticationSchemes(Scheme).RequireAuthenticatedUser());
        // The app: one page whose script talks to the admin API with this session (changes carry the token from the page).
        console.MapGet("/", (HttpContext http, IAntiforgery antiforgery) =>
        {
            Secure(http);
            var html = Asset("index.html")!.Text
                .Replace("{{csrf}}", WebUtility.HtmlEncode(antiforgery.GetAndStoreTokens(http).RequestToken), StringComparison.Ordinal)
                .Replace("{{operator}}", WebUtility.HtmlEncode(http.User.Identity?.Name), StringComparison.Ordinal);
            return Results.Content(html, "text/html; charset=utf-8");
        }).RequireAuthorization(p => p.AddAuthenticationSchemes(Scheme).RequireAuthenticatedUser());
        console.MapGet("/assets/{file}", (string file, HttpContext http) =>
        {
            if (Asset(file) is not { } asset)
            {
                return Results.NotFound();
            }
            http.Response.Headers.CacheControl = "no-cache";
            return Results.Bytes(asset.Bytes, asset.ContentType);
        });
    }

    private static async Task<IResult> SignInAsync([FromForm] SignInForm form, HttpContext http, IAntiforgery antiforgery, ControllerStore store, TimeProvider time, Security.SecurityEvents security,
        Security.SignInThrottle throttle, ILoggerFactory loggers)
    {
        var logger = loggers.CreateLogger("Ferry.Controller.Console");
        var from = http.Connection.RemoteIpAddress?.ToString() ?? "unknown";
        // The name is the visitor's text: control characters could forge log lines.
        var attempted = new string((form.Name ?? "").Trim().Where(c => !char.IsControl(c)).Take(64).ToArray());
        if (await throttle.RefusalAsync(Security.SecurityEvents.ConsoleLoginFailed, attempted, from, http.RequestAborted) is { } throttled)
        {
            await security.RecordAsync(Security.SecurityEvents.SignInThrottled, attempted, $"console sign-in refused unchecked: {throttled}", from, CancellationToken.None);
            http.Response.Headers.RetryAfter = ((int)Security.SignInThrottle.Window.TotalSeconds).ToString(System.Globalization.CultureInfo.InvariantCulture);
            return SignInPage(http, antiforgery, "Sign-in refused: " + throttled, StatusCodes.Status429TooManyRequests);
        }
        var row = string.IsNullOrWhiteSpace(form.Name) ? null : await store.FindOperatorAsync(form.Name.Trim(), http.RequestAborted);
        // The page says only that sign-in failed; the log says why, for the operator who reads it.
        string? refusal = null;
        long step = 0;
        if (row is null)
        {
            // As slow as a real check, so the answer's timing does not tell which names exist.
            PasswordHasher.Verify(form.Password ?? "", UnknownOperatorHash);
            refusal = "no such operator";
        }
        else if (form.Password is null || !PasswordHasher.Verify(form.Password, row.PasswordHash))
        {
            refusal = "wrong password";
        }
        else if (Totp.FromBase32(row.TotpSecret) is not { } secret || Totp.Verify(secret, form.Code, time.GetUtcNow(), row.TotpLastStep) is not { } matched)
        {
            refusal = "wrong or already used TOTP code";
        }
        else if (!await store.ClaimTotpStepAsync(row.Id, matched, time.GetUtcNow().ToUnixTimeMilliseconds(), http.RequestAborted))
        {
            refusal = "TOTP code already used";
        }
        else
        {
            step = matched;
        }
        if (refusal is not null)
        {
            LogSignInRefused(logger, attempted, from, refusal);
            await security.RecordAsync(Security.SecurityEvents.ConsoleLoginFailed, attempted, $"console sign-in refused: {refusal}", from, CancellationToken.None);
            return SignInPage(http, antiforgery, "Sign-in failed: check the name, the password and the code from your authenticator app.", StatusCodes.Status401Unauthorized);
        }
        var identity = new ClaimsIdentity([new Claim(ClaimTypes.Name, row!.Name), new Claim(OperatorIdClaim, row.Id)], Scheme);
        await http.SignInAsync(Scheme, new ClaimsPrincipal(identity));
        LogSignedIn(logger, row.Name, from, step);
        return Results.Redirect("/console/");
    }

    private sealed record ConsoleAsset(byte[] Bytes, string ContentType)
    {
        public string Text => System.Text.Encoding.UTF8.GetString(Bytes);
    }

    private static readonly System.Collections.Concurrent.ConcurrentDictionary<string, ConsoleAsset?> Assets = new(StringComparer.Ordinal);

    /// <summary>A file of the console shipped in the binary (wwwroot); null for any other name.</summary>
    private static ConsoleAsset? Asset(string file) => Assets.GetOrAdd(file, name =>
    {
        var contentType = Path.GetExtension(name) switch
        {
            ".html" => "text/html; charset=utf-8",
            ".js" => "text/javascript; charset=utf-8",
            ".css" => "text/css; charset=utf-8",
            ".svg" => "image/svg+xml",
            _ => null,
        };
        using var stream = contentType is null ? null : typeof(ConsoleEndpoints).Assembly.GetManifestResourceStream("console/" + name);
        if (stream is null)
        {
            return null;
        }
        using var copy = new MemoryStream();
        stream.CopyTo(copy);
        return new ConsoleAsset(copy.ToArray(), contentType!);
    });

    /// <summary>Console pages run only their own script and style, and never inside another site's frame.</summary>
    private static void Secure(HttpContext http)
    {
        http.Response.Headers.ContentSecurityPolicy = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'";
        http.Response.Headers.XContentTypeOptions = "nosniff";
        http.Response.Headers["Referrer-Policy"] = "no-referrer";
        http.Response.Headers.CacheControl = "no-store";
    }

    private static IResult SignInPage(HttpContext http, IAntiforgery antiforgery, string? error, int status) => Page(http, "Sign in to Ferry", $"""
        {(error is null ? "" : $"<p role=\"alert\" class=\"error\">{WebUtility.HtmlEncode(error)}</p>")}
        <form method="post" action="/console/login">
          {Token(http, antiforgery)}
          <label for="name">Operator</label><input id="name" name="name" autocomplete="username" required>
          <label for="password">Password</label><input id="password" name="password" type="password" autocomplete="current-password" required>
          <label for="code">Code from your authenticator app</label><input id="code" name="code" inputmode="numeric" autocomplete="one-time-code" required>
          <button type="submit">Sign in</button>
        </form>
        """, status);

    private static string Token(HttpContext http, IAntiforgery antiforgery)
    {
        var tokens = antiforgery.GetAndStoreTokens(http);
        return $"<input type=\"hidden\" name=\"{tokens.FormFieldName}\" value=\"{WebUtility.HtmlEncode(tokens.RequestToken)}\">";
    }

    /// <summary>A server-rendered page (sign-in) in the console's own style; nothing is fetched from elsewhere.</summary>
    private static IResult Page(HttpContext http, string title, string body, int status)
    {
        Secure(http);
        return Results.Content($$"""
            <!doctype html>
            <html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
            <title>{{WebUtility.HtmlEncode(title)}}</title>
            <link rel="icon" href="data:,"><link rel="stylesheet" href="/console/assets/console.css"></head>
            <body class="narrow"><main><h1>{{WebUtility.HtmlEncode(title)}}</h1>
            {{body}}
            </main></body></html>
            """, "text/html; charset=utf-8", statusCode: status);
    }

    [LoggerMessage(150, LogLevel.Warning, "Console sign-in refused for '{Name}' from {From}: {Reason}")]
    private static partial void LogSignInRefused(ILogger logger, string name, string from, string reason);

    [LoggerMessage(151, LogLevel.Information, "Console sign-in: operator {Name} from {From} (TOTP step {Step})")]
    private static partial void LogSignedIn(ILogger logger, string name, string from, long step);
}
