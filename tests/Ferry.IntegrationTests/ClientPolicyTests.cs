using System.Text.Json;
using Ferry.Core.ControlPlane;
using Ferry.IntegrationTests.Infrastructure;

namespace Ferry.IntegrationTests;

/// <summary>Issue 2: a signed-in client sees exactly what policy grants, and grants or revocations reach it without a restart.</summary>
public sealed class ClientPolicyTests
{
    [Theory]
    [InlineData(StoreKind.Sqlite)]
    [InlineData(StoreKind.Postgres)]
    public async Task Granting_a_resource_makes_it_appear_for_a_running_client_and_revoking_removes_it(StoreKind store)
    {
        await using var controller = await ControllerInstance.StartAsync(store);
        var dir = Directory.CreateTempSubdirectory("ferry-client-").FullName;
        await controller.AdminAsync("network", "create", "corp");
        await controller.AdminAsync("resource", "add", "db.corp.internal", "--network", "corp", "--name", "db", "--tcp", "5432");
        await controller.AdminAsync("resource", "add", "10.9.0.0/24", "--network", "corp", "--name", "lab");
        var env = controller.AdminEnv();
        env["FERRY_PASSWORD"] = "s3cret-password";
        Assert.Equal(0, (await FerryCli.RunAsync(["admin", "user", "create", "alice"], env)).ExitCode);
        await controller.AdminAsync("group", "create", "eng");
        await controller.AdminAsync("group", "add-member", "eng", "alice");

        var clientEnv = new Dictionary<string, string?> { ["FERRY_PASSWORD"] = "s3cret-password" };
        await using var client = FerryProcess.Start("client", ["client", "--state", dir, "up", "--controller", controller.Url, "--controller-fingerprint", controller.Fingerprint, "--user", "alice", "--socks", "0"], clientEnv);
        await client.WaitForLineAsync(l => l.Contains("Resources granted now: 0", StringComparison.Ordinal), TimeSpan.FromSeconds(30), "empty grant list");
        Assert.Empty(await ResourcesAsync(dir));

        // No policy, no resources — even though both exist. Then a grant arrives live.
        var policy = await controller.AdminJsonAsync<JsonElement>("policy", "grant", "db", "--group", "eng");
        var granted = await WaitForAsync(dir, r => r.Length == 1, "db granted");
        Assert.Equal("db", granted[0].Name);
        Assert.Equal("db.corp.internal", granted[0].Address);
        Assert.Equal("5432", granted[0].Tcp);
        Assert.Equal("none", granted[0].Udp);
        Assert.Equal("corp", granted[0].Network);

        // Status shows the device identity and a certificate from the deployment CA.
        var status = JsonDocument.Parse((await FerryCli.RunAsync(["client", "--state", dir, "status"])).Stdout).RootElement;
        Assert.StartsWith("device/dv_", status.GetProperty("identity").GetString(), StringComparison.Ordinal);
        Assert.True(status.GetProperty("connected").GetBoolean());
        Assert.True(status.GetProperty("certificateNotAfter").GetDateTimeOffset() > DateTimeOffset.UtcNow.AddHours(1));

        await controller.AdminAsync("group", "remove-member", "eng", "alice");
        await WaitForAsync(dir, r => r.Length == 0, "membership removed");
        await controller.AdminAsync("group", "add-member", "eng", "alice");
        await WaitForAsync(dir, r => r.Length == 1, "membership restored");
        await controller.AdminAsync("policy", "revoke", policy.GetProperty("id").GetString()!);
        await WaitForAsync(dir, r => r.Length == 0, "policy revoked");
        Assert.False(client.HasExited);

        // A daemon stops when told: SIGTERM ends it promptly and removes nothing it should keep.
        client.Send(UnixSignal.Terminate);
        await client.WaitForExitAsync(TimeSpan.FromSeconds(15));
    }

    [Fact]
    public async Task Service_account_signs_in_with_its_key_and_a_wrong_password_is_refused()
    {
        await using var controller = await ControllerInstance.StartAsync(StoreKind.Sqlite);
        var dir = Directory.CreateTempSubdirectory("ferry-client-").FullName;
        await controller.AdminAsync("network", "create", "corp");
        await controller.AdminAsync("resource", "add", "10.9.0.0/24", "--network", "corp", "--name", "lab");
        var created = await controller.AdminJsonAsync<JsonElement>("service-account", "create", "ci");
        var key = created.GetProperty("key").GetString()!;
        await controller.AdminAsync("policy", "grant", "lab", "--service-account", "ci");

        await using var client = FerryProcess.Start("client", ["client", "--state", dir, "up", "--controller", controller.Url, "--controller-fingerprint", controller.Fingerprint, "--socks", "0"],
            new Dictionary<string, string?> { ["FERRY_SERVICE_ACCOUNT_KEY"] = key });
        await client.WaitForLineAsync(l => l.Contains("Local control socket", StringComparison.Ordinal), TimeSpan.FromSeconds(30), "control socket");
        var granted = await WaitForAsync(dir, r => r.Length == 1, "lab granted");
        Assert.Equal("10.9.0.0/24", granted[0].Address);

        var env = controller.AdminEnv();
        env["FERRY_PASSWORD"] = "right-password";
        Assert.Equal(0, (await FerryCli.RunAsync(["admin", "user", "create", "bob"], env)).ExitCode);
        var other = Directory.CreateTempSubdirectory("ferry-client-").FullName;
        var wrong = await FerryCli.RunAsync(["client", "--state", other, "up", "--controller", controller.Url, "--controller-fingerprint", controller.Fingerprint, "--user", "bob", "--socks", "0"],
            new Dictionary<string, string?> { ["FERRY_PASSWORD"] = "wrong-password" });
        Assert.NotEqual(0, wrong.ExitCode);
        Assert.Contains("error: sign-in refused: user name or password is wrong", wrong.Stderr, StringComparison.Ordinal);

        // A local port that is taken is said plainly, with what to do, not as a crash.
        using var taken = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, 0);
        taken.Start();
        var port = ((System.Net.IPEndPoint)taken.LocalEndpoint).Port.ToString(System.Globalization.CultureInfo.InvariantCulture);
        var busy = await FerryCli.RunAsync(["client", "--state", Directory.CreateTempSubdirectory("ferry-client-").FullName, "up", "--controller", controller.Url,
            "--controller-fingerprint", controller.Fingerprint, "--socks", port], new Dictionary<string, string?> { ["FERRY_SERVICE_ACCOUNT_KEY"] = key });
        Assert.NotEqual(0, busy.ExitCode);
        Assert.StartsWith("error: cannot start the socks5 listener: its loopback port is in use", busy.Stderr, StringComparison.Ordinal);
        Assert.DoesNotContain("Unhandled exception", busy.Stderr, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Device_certificate_names_the_device_is_signed_by_the_deployment_ca_and_is_renewed_before_expiry()
    {
        // 30 s certificates: renewal is due once 10 s are left, so a new one must arrive within about 20 s.
        await using var controller = await ControllerInstance.StartAsync(StoreKind.Sqlite, "--certificate-lifetime", "30");
        var dir = Directory.CreateTempSubdirectory("ferry-client-").FullName;
        var created = await controller.AdminJsonAsync<JsonElement>("service-account", "create", "robot");
        await using var client = FerryProcess.Start("client", ["client", "--state", dir, "up", "--controller", controller.Url, "--controller-fingerprint", controller.Fingerprint, "--socks", "0"],
            new Dictionary<string, string?> { ["FERRY_SERVICE_ACCOUNT_KEY"] = created.GetProperty("key").GetString() });
        await client.WaitForLineAsync(l => l.Contains("Local control socket", StringComparison.Ordinal), TimeSpan.FromSeconds(30), "control socket");

        var first = await StatusAsync(dir, s => s.TryGetProperty("certificateNotAfter", out var n) && n.ValueKind == JsonValueKind.String, "certificate issued", TimeSpan.FromSeconds(15));
        var identity = first.GetProperty("identity").GetString()!;
        Assert.Equal($"CN={identity}", first.GetProperty("certificateSubject").GetString());
        Assert.StartsWith("CN=Ferry deployment CA", first.GetProperty("certificateIssuer").GetString(), StringComparison.Ordinal);
        var firstNotAfter = first.GetProperty("certificateNotAfter").GetDateTimeOffset();
        Assert.InRange(firstNotAfter - DateTimeOffset.UtcNow, TimeSpan.FromSeconds(5), TimeSpan.FromSeconds(35));

        var renewed = await StatusAsync(dir, s => s.GetProperty("certificateNotAfter").GetDateTimeOffset() > firstNotAfter, "certificate renewed", TimeSpan.FromSeconds(40));
        Assert.Equal($"CN={identity}", renewed.GetProperty("certificateSubject").GetString());
    }

    private static async Task<JsonElement> StatusAsync(string state, Func<JsonElement, bool> condition, string what, TimeSpan timeout)
    {
        var deadline = DateTime.UtcNow + timeout;
        JsonElement last = default;
        while (DateTime.UtcNow < deadline)
        {
            var result = await FerryCli.RunAsync(["client", "--state", state, "status"]);
            Assert.True(result.ExitCode == 0, result.ToString());
            last = JsonDocument.Parse(result.Stdout).RootElement;
            if (condition(last))
            {
                return last;
            }
            await Task.Delay(200);
        }
        throw new Xunit.Sdk.XunitException($"client status never showed '{what}'; last: {last}");
    }

    private static async Task<ResourceGrant[]> ResourcesAsync(string state)
    {
        var result = await FerryCli.RunAsync(["client", "--state", state, "resources", "--json"]);
        Assert.True(result.ExitCode == 0, result.ToString());
        return JsonSerializer.Deserialize<ResourceGrant[]>(result.Stdout, ControllerInstance.Json)!;
    }

    private static async Task<ResourceGrant[]> WaitForAsync(string state, Func<ResourceGrant[], bool> condition, string what)
    {
        var deadline = DateTime.UtcNow.AddSeconds(15);
        ResourceGrant[] last = [];
        while (DateTime.UtcNow < deadline)
        {
            last = await ResourcesAsync(state);
            if (condition(last))
            {
                return last;
            }
            await Task.Delay(100);
        }
        throw new Xunit.Sdk.XunitException($"client resources never became '{what}'; last: {JsonSerializer.Serialize(last)}");
    }
}
