using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using Ferry.Core.Api;
using Ferry.Core.ControlPlane;
using Ferry.Core.Security;
using Ferry.IntegrationTests.Infrastructure;

namespace Ferry.IntegrationTests;

/// <summary>
/// Issue 9: a network that requires a second factor refuses a device without a fresh one, lets it through after a TOTP code,
/// keeps a busy flow up, and drops the device again after its inactivity threshold (the controller decides, the connector cuts).
/// </summary>
public sealed class MfaTests
{
    // Short, so the test sees it pass (the connector reports traffic every second and the controller sweeps every second), yet
    // long enough that a loaded CI host gets from the code to the first flow inside it: at 4 s, one run spent 3 s there.
    private const int IdleSeconds = 8;

    [Theory]
    [InlineData(StoreKind.Sqlite)]
    [InlineData(StoreKind.Postgres)]
    public async Task Mfa_network_refuses_without_a_fresh_second_factor_and_drops_the_device_after_the_idle_threshold(StoreKind store)
    {
        var ct = TestContext.Current.CancellationToken;
        await using var controller = await ControllerInstance.StartAsync(store);
        await using var echo = new EchoServer(IPAddress.Loopback);
        await using var deployment = await TestDeployment.StartAsync(controller, "127.0.0.1", echo.Port.ToString(System.Globalization.CultureInfo.InvariantCulture), ct);

        var network = await controller.AdminJsonAsync<NetworkView>("network", "set", "corp", "--require-mfa", "--mfa-idle-timeout", IdleSeconds.ToString(System.Globalization.CultureInfo.InvariantCulture));
        Assert.True(network.RequireMfa);
        Assert.Equal(IdleSeconds, network.MfaIdleTimeoutSeconds);
        var env = controller.AdminEnv();
        env["FERRY_PASSWORD"] = "s3cret-password";
        Assert.Equal(0, (await FerryCli.RunAsync(["admin", "user", "create", "alice"], env)).ExitCode);
        var enrolled = await controller.AdminJsonAsync<UserMfaEnrolled>("user", "mfa", "enrol", "alice");
        Assert.StartsWith("otpauth://totp/", enrolled.TotpUri, StringComparison.Ordinal);
        var secret = Totp.FromBase32(enrolled.TotpSecret)!;
        await controller.AdminAsync("group", "create", "eng");
        await controller.AdminAsync("group", "add-member", "eng", "alice");
        await controller.AdminAsync("policy", "grant", "svc", "--group", "eng");

        var state = Path.Combine(deployment.Directory, "alice");
        await using var client = FerryProcess.Start("client",
            ["client", "--state", state, "up", "--controller", controller.Url, "--controller-fingerprint", controller.Fingerprint, "--user", "alice",
             "--socks", "off", "--forward", $"0=127.0.0.1:{echo.Port}"],
            new Dictionary<string, string?> { ["FERRY_PASSWORD"] = "s3cret-password" });
        var forward = Endpoint(await client.WaitForLineAsync(l => l.Contains($"forward 127.0.0.1:{echo.Port} listening on", StringComparison.Ordinal), TimeSpan.FromSeconds(30), "forward listener"));
        string Logs() => $"\n--- client:\n{client.Output}\n--- connector:\n{deployment.Connector.Output}\n--- controller:\n{controller.Process.Output}";

        // The grant is visible but locked, with what to do.
        var locked = await WaitForResourcesAsync(state, r => r.Length == 1 && r[0].Locked is not null, "svc granted but locked");
        Assert.Contains("requires a second factor", locked[0].Locked, StringComparison.Ordinal);
        Assert.Contains("ferry client mfa", locked[0].Locked, StringComparison.Ordinal);

        // 1. No second factor yet: the controller refuses the relay ticket, so the flow ends without a byte, and the client says why.
        Assert.False(await EchoesAsync(forward, "before the code", ct), "a flow went through before any second factor" + Logs());
        await client.WaitForLineAsync(l => l.Contains("requires a second factor", StringComparison.Ordinal) && l.Contains("ferry client mfa", StringComparison.Ordinal),
            TimeSpan.FromSeconds(10), "the refusal naming the second factor");

        // 2. A wrong code is refused and recorded as the user's security event; the code itself appears in no log.
        var right = Totp.Code(secret, Totp.StepAt(DateTimeOffset.UtcNow));
        var wrongCode = right == "123456" ? "654321" : "123456";
        var wrong = await FerryCli.RunAsync(["client", "--state", state, "mfa", wrongCode]);
        Assert.NotEqual(0, wrong.ExitCode);
        Assert.Contains("error: second factor refused: the second-factor code is wrong or was already used", wrong.Stderr, StringComparison.Ordinal);
        var alice = await controller.AdminJsonAsync<UserDetailView>("user", "show", "alice");
        Assert.True(alice.MfaEnrolled);
        Assert.Contains(alice.Events, e => e.Kind == "mfa-failed");
        var security = await controller.AdminJsonAsync<SecurityEventView[]>("security-events", "--kind", "mfa-failed");
        Assert.Contains(security, e => e.Kind == "mfa-failed" && e.Message.Contains("wrong or already used code", StringComparison.Ordinal) && !e.Message.Contains(wrongCode, StringComparison.Ordinal));
        Assert.False(await EchoesAsync(forward, "after a wrong code", ct), "a flow went through after a wrong code" + Logs());

        // 3. The right code unlocks the network for this device: bytes go through intact. The same code again is refused.
        var confirmed = await ConfirmAsync(state, secret);
        Assert.Contains("network 'corp' unlocked", confirmed.Stdout, StringComparison.Ordinal);
        Assert.True(await EchoesSoonAsync(forward, "after the code", ct), "no flow after the right code" + Logs());
        await WaitForResourcesAsync(state, r => r.Length == 1 && r[0].Locked is null, "svc unlocked");
        var replay = await FerryCli.RunAsync(["client", "--state", state, "mfa", confirmed.Code]);
        Assert.NotEqual(0, replay.ExitCode);
        Assert.DoesNotContain(confirmed.Code, controller.Process.Output + client.Output + deployment.Connector.Output, StringComparison.Ordinal);
        Assert.DoesNotContain(enrolled.TotpSecret, controller.Process.Output + client.Output, StringComparison.Ordinal);
        await controller.Process.WaitForLineAsync(l => l.Contains("Second factor of device/", StringComparison.Ordinal) && l.Contains("started for network corp", StringComparison.Ordinal),
            TimeSpan.FromSeconds(5), "second factor start logged");

        // 4. A flow that keeps sending stays up well beyond the threshold: its traffic keeps the second factor alive.
        using (var busy = new TcpClient())
        {
            await busy.ConnectAsync(forward, ct);
            var stream = busy.GetStream();
            var buffer = new byte[64];
            var kept = Stopwatch.StartNew();
            var round = 0;
            while (kept.Elapsed < TimeSpan.FromSeconds(IdleSeconds * 2))
            {
                var payload = Encoding.ASCII.GetBytes($"round {round++:D4}\n");
                await stream.WriteAsync(payload, ct);
                var read = await stream.ReadAtLeastAsync(buffer.AsMemory(0, payload.Length), payload.Length, throwOnEndOfStream: false, ct).AsTask().WaitAsync(TimeSpan.FromSeconds(10), ct);
                Assert.True(read == payload.Length && buffer.AsSpan(0, read).SequenceEqual(payload),
                    $"the busy flow broke after {kept.Elapsed.TotalSeconds:0.0} s (round {round})" + Logs());
                await Task.Delay(300, ct);
            }

            // 5. Once it goes quiet, the threshold passes, the controller ends the second factor, and the connector cuts the idle flow.
            var quiet = Stopwatch.StartNew();
            using var bound = CancellationTokenSource.CreateLinkedTokenSource(ct);
            bound.CancelAfter(TimeSpan.FromSeconds(IdleSeconds + 10));
            try
            {
                while (await stream.ReadAsync(buffer, bound.Token) > 0)
                {
                }
            }
            catch (IOException)
            {
                // A reset is as good as an end: the flow is gone.
            }
            catch (OperationCanceledException) when (!ct.IsCancellationRequested)
            {
                Assert.Fail($"the idle flow was still open {quiet.Elapsed.TotalSeconds:0.0} s after its last byte" + Logs());
            }
            Assert.True(quiet.Elapsed >= TimeSpan.FromSeconds(IdleSeconds - 1.5), $"the idle flow was cut after only {quiet.Elapsed.TotalSeconds:0.0} s" + Logs());
        }
        await controller.Process.WaitForLineAsync(l => l.Contains("Second factor of device/", StringComparison.Ordinal) && l.Contains("ended: no traffic for", StringComparison.Ordinal),
            TimeSpan.FromSeconds(5), "second factor end logged");

        // 6. A new flow is refused again (now by the connector, over the connection the client already holds), naming the second factor.
        await WaitForResourcesAsync(state, r => r.Length == 1 && r[0].Locked is not null, "svc locked again");
        Assert.False(await EchoesAsync(forward, "after the threshold", ct), "a flow went through after the second factor lapsed" + Logs());
        await deployment.Connector.WaitForLineAsync(l => l.Contains("requires a second factor", StringComparison.Ordinal),
            TimeSpan.FromSeconds(10), "the connector's refusal naming the second factor");

        // 7. Confirming again unlocks it again.
        await ConfirmAsync(state, secret);
        Assert.True(await EchoesSoonAsync(forward, "after confirming again", ct), "no flow after confirming again" + Logs());
    }

    [Fact]
    public async Task Network_mfa_settings_are_checked_and_shown()
    {
        await using var controller = await ControllerInstance.StartAsync(StoreKind.Sqlite);
        var created = await controller.AdminJsonAsync<NetworkView>("network", "create", "vault", "--require-mfa");
        Assert.True(created.RequireMfa);
        Assert.Equal(900, created.MfaIdleTimeoutSeconds);
        var plain = await controller.AdminJsonAsync<NetworkView>("network", "create", "lab");
        Assert.False(plain.RequireMfa);
        Assert.Null(plain.MfaIdleTimeoutSeconds);

        var tooShort = await controller.AdminRawAsync("network", "set", "vault", "--mfa-idle-timeout", "1");
        Assert.NotEqual(0, tooShort.ExitCode);
        Assert.Contains("MFA idle timeout 1 s is out of range", tooShort.Stderr, StringComparison.Ordinal);
        var withoutMfa = await controller.AdminRawAsync("network", "create", "other", "--mfa-idle-timeout", "60");
        Assert.NotEqual(0, withoutMfa.ExitCode);
        Assert.Contains("add --require-mfa", withoutMfa.Stderr, StringComparison.Ordinal);

        var changed = await controller.AdminJsonAsync<NetworkView>("network", "set", "vault", "--mfa-idle-timeout", "60");
        Assert.Equal(60, changed.MfaIdleTimeoutSeconds);
        var off = await controller.AdminJsonAsync<NetworkView>("network", "set", "vault", "--no-require-mfa");
        Assert.False(off.RequireMfa);
        var table = await controller.AdminAsync("network", "list");
        Assert.Contains("MFA", table, StringComparison.Ordinal);
        await controller.AdminAsync("network", "set", "vault", "--require-mfa");
        await controller.AdminAsync("network", "delete", "vault");
        Assert.DoesNotContain("vault", await controller.AdminAsync("network", "list"), StringComparison.Ordinal);

        var env = controller.AdminEnv();
        env["FERRY_PASSWORD"] = "s3cret-password";
        Assert.Equal(0, (await FerryCli.RunAsync(["admin", "user", "create", "bob"], env)).ExitCode);
        await controller.AdminAsync("user", "mfa", "enrol", "bob");
        var again = await controller.AdminRawAsync("user", "mfa", "enrol", "bob");
        Assert.NotEqual(0, again.ExitCode);
        Assert.Contains("has a second factor enrolled already", again.Stderr, StringComparison.Ordinal);
        await controller.AdminAsync("user", "mfa", "reset", "bob");
        Assert.False((await controller.AdminJsonAsync<UserDetailView>("user", "show", "bob")).MfaEnrolled);
        var resetAgain = await controller.AdminRawAsync("user", "mfa", "reset", "bob");
        Assert.Contains("has no second factor enrolled", resetAgain.Stderr, StringComparison.Ordinal);
    }

    /// <summary>Sends the current code, or the next step's (also accepted) when the current one was used already: a step is good once.</summary>
    private static async Task<(string Stdout, string Code)> ConfirmAsync(string state, byte[] secret)
    {
        var deadline = DateTime.UtcNow.AddSeconds(70);
        CommandResult last = new(-1, "", "");
        do
        {
            var now = Totp.StepAt(DateTimeOffset.UtcNow);
            foreach (var step in new[] { now, now + 1 })
            {
                var code = Totp.Code(secret, step);
                last = await FerryCli.RunAsync(["client", "--state", state, "mfa", code]);
                if (last.ExitCode == 0)
                {
                    return (last.Stdout, code);
                }
                Assert.Contains("wrong or was already used", last.Stderr, StringComparison.Ordinal);
            }
            await Task.Delay(1000);
        }
        while (DateTime.UtcNow < deadline);
        throw new Xunit.Sdk.XunitException($"no code was accepted within 70 s; last: {last}");
    }

    /// <summary>
    /// Whether a flow echoes within half the idle threshold of a code being accepted. The unlock reaches the connector's access
    /// table a push after the controller accepts the code, so the first tries may be refused; waiting longer would let the fresh
    /// second factor lapse for want of traffic.
    /// </summary>
    private static async Task<bool> EchoesSoonAsync(IPEndPoint forward, string text, CancellationToken ct)
    {
        var tried = Stopwatch.StartNew();
        for (var attempt = 0; attempt < 20; attempt++)
        {
            if (await EchoesAsync(forward, text, ct))
            {
                return true;
            }
            if (tried.Elapsed > TimeSpan.FromSeconds(IdleSeconds / 2.0))
            {
                return false;
            }
            await Task.Delay(100, ct);
        }
        return false;
    }

    /// <summary>Whether a new flow through the forward echoes a line intact; false when it ends without one.</summary>
    private static async Task<bool> EchoesAsync(IPEndPoint forward, string text, CancellationToken ct)
    {
        using var tcp = new TcpClient();
        await tcp.ConnectAsync(forward, ct);
        var stream = tcp.GetStream();
        var payload = Encoding.ASCII.GetBytes(text + "\n");
        try
        {
            await stream.WriteAsync(payload, ct);
            var buffer = new byte[payload.Length];
            var read = await stream.ReadAtLeastAsync(buffer, payload.Length, throwOnEndOfStream: false, ct).AsTask().WaitAsync(TimeSpan.FromSeconds(30), ct);
            if (read == 0)
            {
                return false;
            }
            Assert.Equal(payload, buffer[..read]);
            return true;
        }
        catch (IOException)
        {
            return false;
        }
    }

    private static async Task<ResourceGrant[]> WaitForResourcesAsync(string state, Func<ResourceGrant[], bool> condition, string what)
    {
        var deadline = DateTime.UtcNow.AddSeconds(15);
        ResourceGrant[] last = [];
        while (DateTime.UtcNow < deadline)
        {
            var result = await FerryCli.RunAsync(["client", "--state", state, "resources", "--json"]);
            if (result.ExitCode == 0)
            {
                last = JsonSerializer.Deserialize<ResourceGrant[]>(result.Stdout, ControllerInstance.Json)!;
                if (condition(last))
                {
                    return last;
                }
            }
            await Task.Delay(100);
        }
        throw new Xunit.Sdk.XunitException($"client resources never became '{what}'; last: {JsonSerializer.Serialize(last)}");
    }

    private static IPEndPoint Endpoint(string logLine) => IPEndPoint.Parse(logLine[(logLine.LastIndexOf(' ') + 1)..]);
}
