using System.Net;
using System.Net.Http.Json;
using Ferry.Core.Api;
using Ferry.IntegrationTests.Infrastructure;

namespace Ferry.IntegrationTests;

/// <summary>Password guessing against client sign-in meets a limit per user and per address, refused unchecked and recorded.</summary>
public sealed class SignInThrottleTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public async Task Five_wrong_passwords_lock_the_user_and_twenty_failures_lock_the_address_even_for_the_right_password()
    {
        await using var controller = await ControllerInstance.StartAsync(StoreKind.Sqlite);
        foreach (var user in new[] { "alice", "bob", "carol" })
        {
            var env = controller.AdminEnv();
            env["FERRY_PASSWORD"] = $"{user}'s long password";
            var created = await FerryCli.RunAsync(["admin", "user", "create", user], env);
            Assert.True(created.ExitCode == 0, created.ToString());
        }
        using var http = controller.Http(withApiKey: false);
        Task<HttpResponseMessage> SignIn(string user, string password) => http.PostAsJsonAsync("/v1/client/login", new ClientLoginRequest(user, password, null, "laptop", null), Ct);

        Assert.Equal(HttpStatusCode.OK, (await SignIn("alice", "alice's long password")).StatusCode);
        for (var i = 0; i < 5; i++)
        {
            Assert.Equal(HttpStatusCode.Unauthorized, (await SignIn("alice", $"guess {i}")).StatusCode);
        }
        // The sixth attempt is not checked at all: even the right password is refused, and says why and for how long.
        var locked = await SignIn("alice", "alice's long password");
        Assert.Equal(HttpStatusCode.TooManyRequests, locked.StatusCode);
        Assert.Equal(TimeSpan.FromMinutes(5), locked.Headers.RetryAfter?.Delta);
        Assert.Contains("too many failed sign-ins for this account", await locked.Content.ReadAsStringAsync(Ct), StringComparison.Ordinal);
        // Another user from the same address is not affected yet.
        Assert.Equal(HttpStatusCode.OK, (await SignIn("bob", "bob's long password")).StatusCode);

        // Spraying many names from one address: after twenty failures in all, the address is refused, right password or not.
        for (var i = 0; i < 15; i++)
        {
            Assert.Equal(HttpStatusCode.Unauthorized, (await SignIn($"nobody{i}", "guess")).StatusCode);
        }
        var sprayed = await SignIn("carol", "carol's long password");
        Assert.Equal(HttpStatusCode.TooManyRequests, sprayed.StatusCode);
        Assert.Contains("too many failed sign-ins from this address", await sprayed.Content.ReadAsStringAsync(Ct), StringComparison.Ordinal);

        using var admin = controller.Http();
        var throttled = (await admin.GetFromJsonAsync<SecurityEventView[]>("/api/v1/security-events?kind=sign-in-throttled", ControllerInstance.Json, Ct))!;
        Assert.Equal(["carol", "alice"], throttled.Select(e => e.Subject));
        Assert.All(throttled, e => Assert.Equal("127.0.0.1", e.Source));
        Assert.DoesNotContain(throttled, e => e.Message.Contains("long password", StringComparison.Ordinal));
    }
}
