using System.Net;
using System.Net.Http.Json;
using System.Text.Json;
using System.Text.RegularExpressions;
using Ferry.Core.Api;
using Ferry.Core.Security;
using Ferry.IntegrationTests.Infrastructure;

namespace Ferry.IntegrationTests;

/// <summary>
/// Issue 8, first part: operators of the admin console, each with a password and a TOTP secret shown once, and the console's
/// sign-in: wrong password, wrong or replayed code and a forged form post are refused; a session ends when unused.
/// </summary>
public sealed partial class OperatorTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public async Task Console_sign_in_needs_password_and_a_fresh_totp_code_and_refuses_forged_posts()
    {
        await using var controller = await ControllerInstance.StartAsync(StoreKind.Sqlite, "--console-idle-timeout", "3");
        var (_, secret) = await CreateOpsAsync(controller);
        using var browser = Browser(controller);

        // The page itself: a form with an anti-forgery token and labelled fields, nothing fetched from elsewhere.
        var page = await browser.GetStringAsync("/console/login", Ct);
        Assert.Contains("<label for=\"code\">", page, StringComparison.Ordinal);
        Assert.DoesNotMatch("(src|href)=\"https?://", page);
        var token = CsrfToken(page);

        // Wrong password, then wrong code: refused, with one message that does not say which.
        var wrongPassword = await PostAsync(browser, "/console/login", new() { ["csrf"] = token, ["name"] = "ops", ["password"] = "not the password", ["code"] = Totp.Code(secret, Totp.StepAt(DateTimeOffset.UtcNow)) });
        Assert.Equal(HttpStatusCode.Unauthorized, wrongPassword.StatusCode);
        Assert.Contains("Sign-in failed", await wrongPassword.Content.ReadAsStringAsync(Ct), StringComparison.Ordinal);
        var wrongCode = await PostAsync(browser, "/console/login", new() { ["csrf"] = token, ["name"] = "ops", ["password"] = "a long operator password", ["code"] = WrongCode(secret) });
        Assert.Equal(HttpStatusCode.Unauthorized, wrongCode.StatusCode);
        await controller.Process.WaitForLineAsync(l => l.Contains("Console sign-in refused for 'ops'", StringComparison.Ordinal) && l.Contains("wrong password", StringComparison.Ordinal), TimeSpan.FromSeconds(5), "the refusal logged with its reason");
        await controller.Process.WaitForLineAsync(l => l.Contains("wrong or already used TOTP code", StringComparison.Ordinal), TimeSpan.FromSeconds(5), "the wrong code logged");
        // Both are security events an operator can query; the password tried is not in them.
        var failed = JsonSerializer.Deserialize<SecurityEventView[]>(await controller.AdminAsync("security-events", "--kind", "console-login-failed", "--json"), ControllerInstance.Json)!;
        Assert.Equal(["console sign-in refused: wrong or already used TOTP code", "console sign-in refused: wrong password"], failed.Select(e => e.Message));
        Assert.All(failed, e => Assert.Equal("ops", e.Subject));
        Assert.DoesNotContain(failed, e => e.Message.Contains("not the password", StringComparison.Ordinal));

        // A forged post: the right credentials, but no token from the page (what another site's form would send).
        using (var forger = Browser(controller))
        {
            var forged = await PostAsync(forger, "/console/login", new() { ["name"] = "ops", ["password"] = "a long operator password", ["code"] = Totp.Code(secret, Totp.StepAt(DateTimeOffset.UtcNow)) });
            Assert.Equal(HttpStatusCode.BadRequest, forged.StatusCode);
            // Nor does a token taken from someone else's page pass with this visitor's cookies.
            var stolen = await PostAsync(forger, "/console/login", new() { ["csrf"] = token, ["name"] = "ops", ["password"] = "a long operator password", ["code"] = Totp.Code(secret, Totp.StepAt(DateTimeOffset.UtcNow)) });
            Assert.Equal(HttpStatusCode.BadRequest, stolen.StatusCode);
        }
        Assert.Equal(HttpStatusCode.Redirect, (await browser.GetAsync("/console/", Ct)).StatusCode);

        // The right password and a fresh code: in.
        var code = Totp.Code(secret, Totp.StepAt(DateTimeOffset.UtcNow));
        var signedIn = await PostAsync(browser, "/console/login", new() { ["csrf"] = token, ["name"] = "ops", ["password"] = "a long operator password", ["code"] = code });
        Assert.Equal(HttpStatusCode.Redirect, signedIn.StatusCode);
        Assert.Equal("/console/", signedIn.Headers.Location?.OriginalString);
        var cookie = signedIn.Headers.GetValues("Set-Cookie").Single(c => c.StartsWith("ferry_console=", StringComparison.Ordinal));
        Assert.Contains("secure", cookie, StringComparison.OrdinalIgnoreCase);
        Assert.Contains("httponly", cookie, StringComparison.OrdinalIgnoreCase);
        Assert.Contains("samesite=strict", cookie, StringComparison.OrdinalIgnoreCase);
        var home = await browser.GetAsync("/console/", Ct);
        Assert.Equal(HttpStatusCode.OK, home.StatusCode);
        Assert.Contains("default-src 'self'", home.Headers.GetValues("Content-Security-Policy").Single(), StringComparison.Ordinal);
        var homePage = await home.Content.ReadAsStringAsync(Ct);
        Assert.Contains("<meta name=\"operator\" content=\"ops\">", homePage, StringComparison.Ordinal);

        // The page's script uses the admin API with this session: reads freely, changes only with the page's token.
        Assert.Equal(HttpStatusCode.OK, (await browser.GetAsync("/api/v1/networks", Ct)).StatusCode);
        var noToken = await browser.PostAsJsonAsync("/api/v1/networks", new NetworkCreateRequest("corp"), Ct);
        Assert.Equal(HttpStatusCode.BadRequest, noToken.StatusCode);
        Assert.Contains("anti-forgery token", await noToken.Content.ReadAsStringAsync(Ct), StringComparison.Ordinal);
        var pageToken = WebUtility.HtmlDecode(MetaCsrfPattern().Match(homePage).Groups[1].Value);
        using (var create = new HttpRequestMessage(HttpMethod.Post, "/api/v1/networks") { Content = JsonContent.Create(new NetworkCreateRequest("corp")) })
        {
            create.Headers.Add("X-CSRF", pageToken);
            Assert.Equal(HttpStatusCode.Created, (await browser.SendAsync(create, Ct)).StatusCode);
        }
        Assert.Contains("operator ops", await controller.AdminAsync("audit", "list"), StringComparison.Ordinal);
        // Without a session and without the key, nothing.
        using (var stranger = Browser(controller))
        {
            Assert.Equal(HttpStatusCode.Unauthorized, (await stranger.GetAsync("/api/v1/networks", Ct)).StatusCode);
        }
        Assert.NotNull(JsonSerializer.Deserialize<OperatorView[]>(await controller.AdminAsync("operator", "list", "--json"), ControllerInstance.Json)!.Single().LastSignIn);

        // The same code again, from a fresh visitor: refused (a code is good once).
        using (var replayer = Browser(controller))
        {
            var replayToken = CsrfToken(await replayer.GetStringAsync("/console/login", Ct));
            var replayed = await PostAsync(replayer, "/console/login", new() { ["csrf"] = replayToken, ["name"] = "ops", ["password"] = "a long operator password", ["code"] = code });
            Assert.Equal(HttpStatusCode.Unauthorized, replayed.StatusCode);
        }

        // Unused for longer than the idle timeout (3 s here), the session is over.
        await Task.Delay(TimeSpan.FromSeconds(4), Ct);
        var expired = await browser.GetAsync("/console/", Ct);
        Assert.Equal(HttpStatusCode.Redirect, expired.StatusCode);
        Assert.StartsWith("/console/login", expired.Headers.Location?.PathAndQuery ?? expired.Headers.Location?.OriginalString, StringComparison.Ordinal);
    }

    private static HttpClient Browser(ControllerInstance controller)
    {
        var handler = ControllerTrust.Create(controller.Fingerprint, null).CreateHandler();
        handler.AllowAutoRedirect = false;
        handler.CookieContainer = new CookieContainer();
        handler.UseCookies = true;
        return new HttpClient(handler) { BaseAddress = new Uri(controller.Url), Timeout = TimeSpan.FromSeconds(30) };
    }

    private static Task<HttpResponseMessage> PostAsync(HttpClient browser, string path, Dictionary<string, string> fields)
        => browser.PostAsync(path, new FormUrlEncodedContent(fields), Ct);

    private static string CsrfToken(string page) => CsrfPattern().Match(page) is { Success: true } m ? WebUtility.HtmlDecode(m.Groups[1].Value) : throw new Xunit.Sdk.XunitException("no anti-forgery token on the page:\n" + page);

    /// <summary>A six-digit code that is none of the codes current around now.</summary>
    private static string WrongCode(byte[] secret)
    {
        var step = Totp.StepAt(DateTimeOffset.UtcNow);
        var current = Enumerable.Range(-2, 5).Select(d => Totp.Code(secret, step + d)).ToHashSet();
        return Enumerable.Range(0, 10).Select(i => $"{i}{i}{i}{i}{i}{i}").First(c => !current.Contains(c));
    }

    /// <summary>Creates operator "ops" (password "a long operator password") through the CLI, as an administrator would.</summary>
    private static async Task<(OperatorCreated Answer, byte[] Secret)> CreateOpsAsync(ControllerInstance controller)
    {
        var env = controller.AdminEnv();
        env["FERRY_PASSWORD"] = "a long operator password";
        var created = await FerryCli.RunAsync(["admin", "operator", "create", "ops", "--json"], env);
        Assert.True(created.ExitCode == 0, created.ToString());
        var answer = JsonSerializer.Deserialize<OperatorCreated>(created.Stdout, ControllerInstance.Json)!;
        return (answer, Totp.FromBase32(answer.TotpSecret)!);
    }

    [GeneratedRegex("<meta name=\"csrf\" content=\"([^\"]+)\">")]
    private static partial Regex MetaCsrfPattern();

    [GeneratedRegex("name=\"csrf\" value=\"([^\"]+)\"")]
    private static partial Regex CsrfPattern();

    [Fact]
    public async Task Five_failed_console_sign_ins_lock_the_operator_for_the_window_even_with_the_right_code()
    {
        await using var controller = await ControllerInstance.StartAsync(StoreKind.Sqlite);
        var (_, secret) = await CreateOpsAsync(controller);
        using var browser = Browser(controller);
        var token = CsrfToken(await browser.GetStringAsync("/console/login", Ct));
        for (var i = 0; i < 5; i++)
        {
            var wrong = await PostAsync(browser, "/console/login", new() { ["csrf"] = token, ["name"] = "ops", ["password"] = $"guess {i}", ["code"] = WrongCode(secret) });
            Assert.Equal(HttpStatusCode.Unauthorized, wrong.StatusCode);
        }
        var locked = await PostAsync(browser, "/console/login", new() { ["csrf"] = token, ["name"] = " ops ", ["password"] = "a long operator password", ["code"] = Totp.Code(secret, Totp.StepAt(DateTimeOffset.UtcNow)) });
        Assert.Equal(HttpStatusCode.TooManyRequests, locked.StatusCode);
        Assert.Contains("too many failed sign-ins for this account", await locked.Content.ReadAsStringAsync(Ct), StringComparison.Ordinal);
        var events = JsonSerializer.Deserialize<SecurityEventView[]>(await controller.AdminAsync("security-events", "--kind", "sign-in-throttled", "--json"), ControllerInstance.Json)!;
        Assert.Equal("ops", Assert.Single(events).Subject);
    }

    [Fact]
    public async Task An_operator_is_created_with_a_totp_secret_shown_once_listed_audited_and_removed()
    {
        await using var controller = await ControllerInstance.StartAsync(StoreKind.Sqlite);
        var (answer, _) = await CreateOpsAsync(controller);
        var env = controller.AdminEnv();
        Assert.Equal("ops", answer.Operator.Name);
        Assert.StartsWith("op_", answer.Operator.Id, StringComparison.Ordinal);
        var secret = Totp.FromBase32(answer.TotpSecret);
        Assert.NotNull(secret);
        Assert.Equal(20, secret.Length);
        Assert.Equal($"otpauth://totp/Ferry:ops?secret={answer.TotpSecret}&issuer=Ferry&algorithm=SHA1&digits=6&period=30", answer.TotpUri);

        // Listed without the secret or the password hash; nobody signed in yet.
        var listed = await controller.AdminAsync("operator", "list", "--json");
        Assert.DoesNotContain(answer.TotpSecret, listed, StringComparison.Ordinal);
        Assert.DoesNotContain("pbkdf2", listed, StringComparison.Ordinal);
        var operators = JsonSerializer.Deserialize<OperatorView[]>(listed, ControllerInstance.Json)!;
        Assert.Null(Assert.Single(operators).LastSignIn);

        // Bad input: a short password, a taken name, no password at all.
        env["FERRY_PASSWORD"] = "short";
        var weak = await FerryCli.RunAsync(["admin", "operator", "create", "ops2"], env);
        Assert.NotEqual(0, weak.ExitCode);
        Assert.Contains("at least 12 characters", weak.Stderr, StringComparison.Ordinal);
        env["FERRY_PASSWORD"] = "another long password";
        var taken = await FerryCli.RunAsync(["admin", "operator", "create", "ops"], env);
        Assert.Contains("an operator named 'ops' exists already", taken.Stderr, StringComparison.Ordinal);
        var none = await FerryCli.RunAsync(["admin", "operator", "create", "ops3"], controller.AdminEnv());
        Assert.Contains("give the password with --password-file or FERRY_PASSWORD", none.Stderr, StringComparison.Ordinal);

        await controller.AdminAsync("operator", "remove", "ops");
        Assert.Empty(JsonSerializer.Deserialize<OperatorView[]>(await controller.AdminAsync("operator", "list", "--json"), ControllerInstance.Json)!);
        var audit = await controller.AdminAsync("audit", "list", "--json");
        Assert.Contains("operator.create", audit, StringComparison.Ordinal);
        Assert.Contains("operator.remove", audit, StringComparison.Ordinal);
    }
}
