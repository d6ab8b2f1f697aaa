using System.Net;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json;
using Ferry.IntegrationTests.Infrastructure;

namespace Ferry.IntegrationTests;

/// <summary>Issue 2: the admin API and CLI refuse bad input with a clear reason (4xx problem+json, one CLI line), and nothing but health answers unauthenticated.</summary>
public sealed class AdminApiTests
{
    [Fact]
    public async Task Bad_input_gets_a_clear_error_from_the_cli_never_a_crash()
    {
        await using var controller = await ControllerInstance.StartAsync(StoreKind.Sqlite);
        await controller.AdminAsync("network", "create", "corp");

        (string[] Args, string Expected)[] cases =
        [
            (["resource", "add", "10.0.0.0/33", "--network", "corp"], "error: '10.0.0.0/33' is not a valid CIDR: the prefix length must be a number from 0 to 32"),
            (["resource", "add", "300.1.2.0/24", "--network", "corp"], "error: '300.1.2.0/24' is not a valid CIDR"),
            (["resource", "add", "db.internal", "--network", "corp", "--tcp", "80-22"], "error: port range '80-22' runs backwards"),
            (["resource", "add", "db.internal", "--network", "corp", "--tcp", "70000"], "error: '70000' in port list '70000' is not a port or range"),
            (["resource", "add", "bad name!", "--network", "corp"], "error: 'bad name!' is not a valid address"),
            (["resource", "add", "db.internal", "--network", "nowhere"], "error: network 'nowhere' does not exist"),
            (["resource", "add", "203.0.113.0/24", "--network", "corp"], "error: 203.0.113.0/24 is a public address, and network 'corp' is not an exit network"),
            (["resource", "add", "0.0.0.0/0", "--network", "corp"], "error: 0.0.0.0/0 is a public address"),
            (["device", "remove", "dv_ghost"], "error: device 'dv_ghost' does not exist"),
            (["connector", "provision", "--network", "nowhere"], "error: network 'nowhere' does not exist"),
            (["network", "create", "corp"], "error: a network named 'corp' exists already"),
            (["network", "create", "-bad"], "error:"),
            (["connector", "show", "ghost"], "error: connector 'ghost' does not exist"),
            (["policy", "grant", "ghost", "--group", "nobody"], "error: resource 'ghost' does not exist"),
            (["connector", "provision", "--network", "corp", "--location", "95,200"], "error: location '95,200' is not valid"),
        ];
        foreach (var (args, expected) in cases)
        {
            var result = await controller.AdminRawAsync(args);
            Assert.True(result.ExitCode != 0, $"{string.Join(' ', args)} should fail: {result}");
            var lines = result.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries);
            Assert.True(lines.Length == 1, $"{string.Join(' ', args)} should print one error line: {result}");
            Assert.StartsWith(expected, lines[0], StringComparison.Ordinal);
        }

        await controller.AdminAsync("resource", "add", "db.internal", "--network", "corp", "--name", "db");
        var duplicate = await controller.AdminRawAsync("resource", "add", "other.internal", "--network", "corp", "--name", "db");
        Assert.Equal("error: a resource named 'db' exists already; pick another name with --name", duplicate.Stderr.Trim());

        var noKey = await FerryCli.RunAsync(["admin", "network", "list", "--controller", controller.Url, "--controller-fingerprint", controller.Fingerprint]);
        Assert.Equal(2, noKey.ExitCode);
        Assert.Contains("no admin API key", noKey.Stderr, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Api_answers_problem_json_for_bad_requests_and_401_without_the_key()
    {
        await using var controller = await ControllerInstance.StartAsync(StoreKind.Sqlite);
        using var anonymous = controller.Http(withApiKey: false);
        var ct = TestContext.Current.CancellationToken;

        var health = await anonymous.GetAsync("/healthz", ct);
        Assert.Equal(HttpStatusCode.OK, health.StatusCode);
        var ready = await anonymous.GetFromJsonAsync<JsonElement>("/readyz", ct);
        Assert.Equal("ready", ready.GetProperty("status").GetString());

        foreach (var path in new[] { "/api/v1/networks", "/api/v1/connectors", "/api/v1/audit", "/openapi/v1.json" })
        {
            var refused = await anonymous.GetAsync(path, ct);
            Assert.Equal(HttpStatusCode.Unauthorized, refused.StatusCode);
            Assert.Equal("application/problem+json", refused.Content.Headers.ContentType?.MediaType);
        }
        using var wrongKey = controller.Http(withApiKey: false);
        wrongKey.DefaultRequestHeaders.Authorization = new("Bearer", "ferry_ak_wrong");
        var wrong = await wrongKey.GetAsync("/api/v1/networks", ct);
        Assert.Equal(HttpStatusCode.Unauthorized, wrong.StatusCode);
        Assert.Contains("wrong", (await wrong.Content.ReadFromJsonAsync<JsonElement>(ct)).GetProperty("detail").GetString(), StringComparison.Ordinal);

        using var admin = controller.Http();
        var malformed = await admin.PostAsync("/api/v1/networks", new StringContent("{ not json", Encoding.UTF8, "application/json"), ct);
        Assert.Equal(HttpStatusCode.BadRequest, malformed.StatusCode);
        Assert.Equal("application/problem+json", malformed.Content.Headers.ContentType?.MediaType);

        var cidr = await admin.PostAsJsonAsync("/api/v1/resources", new { network = "x", address = "10.0.0.0/8" }, ct);
        Assert.Equal(HttpStatusCode.NotFound, cidr.StatusCode);
        var problem = await cidr.Content.ReadFromJsonAsync<JsonElement>(ct);
        Assert.Equal("network 'x' does not exist", problem.GetProperty("detail").GetString());
        Assert.Equal(404, problem.GetProperty("status").GetInt32());

        var emptyName = await admin.PostAsJsonAsync("/api/v1/networks", new { name = "" }, ct);
        Assert.Equal(HttpStatusCode.BadRequest, emptyName.StatusCode);

        var refresh = await anonymous.PostAsJsonAsync("/v1/daemon/refresh", new { refreshToken = "ferry_rt_nope" }, ct);
        Assert.Equal(HttpStatusCode.Unauthorized, refresh.StatusCode);

        // The API is described by OpenAPI, behind the same key.
        var openApi = await admin.GetFromJsonAsync<JsonElement>("/openapi/v1.json", ct);
        var paths = openApi.GetProperty("paths");
        foreach (var path in new[] { "/api/v1/networks", "/api/v1/connectors", "/api/v1/resources", "/api/v1/policies", "/api/v1/service-accounts" })
        {
            Assert.True(paths.TryGetProperty(path, out _), $"OpenAPI lacks {path}");
        }

        // Every change is audited.
        await controller.AdminAsync("network", "create", "audited");
        var audit = await admin.GetFromJsonAsync<JsonElement[]>("/api/v1/audit", ct);
        Assert.Contains(audit!, a => a.GetProperty("action").GetString() == "network.create" && a.GetProperty("target").GetString() == "audited");
    }
}
