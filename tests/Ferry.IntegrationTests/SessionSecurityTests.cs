using System.Net.WebSockets;
using System.Text;
using Ferry.Core.ControlPlane;
using Ferry.Core.Security;
using Ferry.Core.Tokens;
using Ferry.IntegrationTests.Infrastructure;

namespace Ferry.IntegrationTests;

/// <summary>Issue 2: expired tokens are refused with the reason (and the refresh token recovers), and a forwarded-for header counts only from a named proxy.</summary>
public sealed class SessionSecurityTests
{
    [Fact]
    public async Task Expired_access_token_is_refused_with_the_reason_and_the_connector_recovers_with_its_refresh_token()
    {
        await using var controller = await ControllerInstance.StartAsync(StoreKind.Sqlite, "--access-token-lifetime", "2");
        var dir = Directory.CreateTempSubdirectory("ferry-test-").FullName;
        await controller.AdminAsync("network", "create", "corp");
        var tokensPath = await controller.ProvisionAsync("corp", "late", dir);
        var tokens = TokenFile.Read(tokensPath);

        // The condition waited for is the clock itself passing the token's expiry.
        var wait = tokens.AccessTokenExpiresAt - DateTimeOffset.UtcNow + TimeSpan.FromMilliseconds(500);
        if (wait > TimeSpan.Zero)
        {
            await Task.Delay(wait, TestContext.Current.CancellationToken);
        }
        var session = new ControllerSessionClient(ControllerEndpoints.Of(new Uri(controller.Url)), ControllerTrust.Create(controller.Fingerprint, null), TimeProvider.System);
        var outcome = await session.RunAsync(tokens.AccessToken, TestContext.Current.CancellationToken).WaitAsync(TimeSpan.FromSeconds(20), TestContext.Current.CancellationToken);
        Assert.True(outcome.Refused);
        Assert.Equal("token-expired", outcome.Code);
        Assert.Contains("access token expired at", outcome.Reason, StringComparison.Ordinal);

        await using var connector = controller.StartConnector(tokensPath);
        await controller.WaitForConnectorAsync("late", v => v.State == "online", TimeSpan.FromSeconds(30), "online after refreshing");
    }

    [Theory]
    [InlineData(false, "127.0.0.1")]
    [InlineData(true, "198.51.100.7")]
    public async Task Forwarded_for_counts_only_from_a_trusted_proxy(bool trustLoopbackProxy, string expectedPublicIp)
    {
        await using var controller = trustLoopbackProxy
            ? await ControllerInstance.StartAsync(StoreKind.Sqlite, "--trusted-proxy", "127.0.0.1")
            : await ControllerInstance.StartAsync(StoreKind.Sqlite);
        var dir = Directory.CreateTempSubdirectory("ferry-test-").FullName;
        await controller.AdminAsync("network", "create", "corp");
        var tokens = TokenFile.Read(await controller.ProvisionAsync("corp", "proxied", dir));
        var ct = TestContext.Current.CancellationToken;

        using var socket = new ClientWebSocket();
        socket.Options.SetRequestHeader("Authorization", "Bearer " + tokens.AccessToken);
        socket.Options.SetRequestHeader("X-Forwarded-For", "198.51.100.7");
        using var invoker = new HttpMessageInvoker(ControllerTrust.Create(controller.Fingerprint, null).CreateHandler());
        await socket.ConnectAsync(new Uri(controller.Url.Replace("https://", "wss://", StringComparison.Ordinal) + "/v1/session"), invoker, ct);
        await using var session = new SessionSocket(socket);
        var probe = Assert.IsType<ProbeMessage>(await session.ReceiveAsync(ct));
        await session.SendAsync(new HelloMessage("proxied-host", [], "test", probe.Seq, probe.ControllerTimeMs, DateTimeOffset.UtcNow.ToUnixTimeMilliseconds(), null), ct);
        Assert.IsType<WelcomeMessage>(await session.ReceiveAsync(ct));

        var view = await controller.WaitForConnectorAsync("proxied", v => v.State == "online", TimeSpan.FromSeconds(10), "online");
        Assert.Equal(expectedPublicIp, view.PublicIp);
        Assert.Equal("proxied-host", view.Hostname);
    }
}
