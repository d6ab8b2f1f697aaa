using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using Ferry.IntegrationTests.Infrastructure;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace Ferry.IntegrationTests;

/// <summary>Issue 5: real applications (curl, a ProxyCommand-style pipe, a plain TCP client) reach a private service through the real client, relay and connector.</summary>
public sealed class ClientAccessTests
{
    [Fact]
    public async Task Curl_through_socks5_and_http_connect_a_port_forward_and_client_connect_all_reach_the_service()
    {
        var ct = TestContext.Current.CancellationToken;
        if (!File.Exists("/usr/bin/curl"))
        {
            Assert.Skip("needs curl (Debian package curl)");
        }
        await using var controller = await ControllerInstance.StartAsync(StoreKind.Sqlite);
        await using var web = await PrivateWebAsync(ct);
        await using var echo = new EchoServer(IPAddress.Loopback);
        var webPort = new Uri(web.Urls.First()).Port;
        await using var deployment = await TestDeployment.StartAsync(controller, "127.0.0.1", $"{webPort},{echo.Port}", ct);

        var state = Path.Combine(deployment.Directory, "client");
        await using var client = FerryProcess.Start("client",
            ["client", "--state", state, "up", "--controller", controller.Url, "--controller-fingerprint", controller.Fingerprint,
             "--socks", "0", "--http-proxy", "0", "--forward", $"0=127.0.0.1:{echo.Port}"],
            new Dictionary<string, string?> { ["FERRY_SERVICE_ACCOUNT_KEY"] = deployment.ServiceAccountKey });
        var socks = Endpoint(await client.WaitForLineAsync(l => l.Contains("socks5 listening on", StringComparison.Ordinal), TimeSpan.FromSeconds(30), "SOCKS5 listener"));
        var http = Endpoint(await client.WaitForLineAsync(l => l.Contains("http-connect listening on", StringComparison.Ordinal), TimeSpan.FromSeconds(30), "HTTP CONNECT listener"));
        var forward = Endpoint(await client.WaitForLineAsync(l => l.Contains($"forward 127.0.0.1:{echo.Port} listening on", StringComparison.Ordinal), TimeSpan.FromSeconds(30), "forward listener"));
        await client.WaitForLineAsync(l => l.Contains("Resources granted now: 1", StringComparison.Ordinal), TimeSpan.FromSeconds(30), "grant");

        // curl through SOCKS5 (the name is resolved by the connector) and through HTTP CONNECT: the answer is the service's own.
        var viaSocks = await CurlAsync(["--socks5-hostname", socks.ToString(), $"http://127.0.0.1:{webPort}/hello"], ct);
        Assert.True(viaSocks.Code == 0, viaSocks.Output + "\n--- client:\n" + client.Output + "\n--- connector:\n" + deployment.Connector.Output);
        Assert.Equal(PrivateBody, viaSocks.Output);
        var viaConnect = await CurlAsync(["--proxytunnel", "--proxy", $"http://{http}", $"http://127.0.0.1:{webPort}/hello"], ct);
        Assert.True(viaConnect.Code == 0, viaConnect.Output);
        Assert.Equal(PrivateBody, viaConnect.Output);

        // A port that is not allowed is refused at the connector: SOCKS5 "not allowed" (curl exit 97) and HTTP 403 with the reason.
        var deniedSocks = await CurlAsync(["--socks5-hostname", socks.ToString(), $"http://127.0.0.1:{webPort + 7}/"], ct);
        Assert.NotEqual(0, deniedSocks.Code);
        var deniedConnect = await CurlAsync(["--proxytunnel", "--proxy", $"http://{http}", "-v", $"http://127.0.0.1:{webPort + 7}/"], ct);
        Assert.Contains("403", deniedConnect.Output, StringComparison.Ordinal);

        // A named port forward: a plain TCP client, bytes echoed intact.
        using (var tcp = new TcpClient())
        {
            await tcp.ConnectAsync(forward, ct);
            var stream = tcp.GetStream();
            var payload = Encoding.ASCII.GetBytes("through the forward\n");
            await stream.WriteAsync(payload, ct);
            tcp.Client.Shutdown(SocketShutdown.Send);
            using var back = new MemoryStream();
            await stream.CopyToAsync(back, ct).WaitAsync(TimeSpan.FromSeconds(20), ct);
            Assert.Equal(payload, back.ToArray());
        }

        // 'ferry client connect' joins stdin/stdout to the resource, as ssh's ProxyCommand uses it.
        await using var connect = FerryProcess.Start("connect", ["client", "--state", state, "connect", "127.0.0.1", echo.Port.ToString(System.Globalization.CultureInfo.InvariantCulture)]);
        await connect.Input.WriteLineAsync("SSH-2.0-ferry-test");
        await connect.Input.FlushAsync(ct);
        connect.Input.Close();
        Assert.Equal(0, await connect.WaitForExitAsync(TimeSpan.FromSeconds(30)));
        Assert.Equal("SSH-2.0-ferry-test", connect.Stdout.Trim());
    }

    [Fact]
    public async Task Revoking_the_grant_closes_a_live_flow_within_two_seconds_and_refuses_new_ones()
    {
        var ct = TestContext.Current.CancellationToken;
        await using var controller = await ControllerInstance.StartAsync(StoreKind.Sqlite);
        await using var echo = new EchoServer(IPAddress.Loopback);
        await using var deployment = await TestDeployment.StartAsync(controller, "127.0.0.1", echo.Port.ToString(System.Globalization.CultureInfo.InvariantCulture), ct);
        var state = Path.Combine(deployment.Directory, "client");
        await using var client = FerryProcess.Start("client",
            ["client", "--state", state, "up", "--controller", controller.Url, "--controller-fingerprint", controller.Fingerprint, "--socks", "off", "--forward", $"0=127.0.0.1:{echo.Port}"],
            new Dictionary<string, string?> { ["FERRY_SERVICE_ACCOUNT_KEY"] = deployment.ServiceAccountKey });
        var forward = Endpoint(await client.WaitForLineAsync(l => l.Contains($"forward 127.0.0.1:{echo.Port} listening on", StringComparison.Ordinal), TimeSpan.FromSeconds(30), "forward listener"));
        await client.WaitForLineAsync(l => l.Contains("Resources granted now: 1", StringComparison.Ordinal), TimeSpan.FromSeconds(30), "grant");

        using var tcp = new TcpClient();
        await tcp.ConnectAsync(forward, ct);
        var stream = tcp.GetStream();
        var buffer = new byte[64];
        await stream.WriteAsync("still here?"u8.ToArray(), ct);
        var echoed = await stream.ReadAtLeastAsync(buffer, 11, throwOnEndOfStream: false, ct).AsTask().WaitAsync(TimeSpan.FromSeconds(20), ct);
        Assert.True(echoed == 11, $"flow closed before echoing; client:\n{client.Output}\nconnector:\n{deployment.Connector.Output}");

        var policy = (await controller.AdminJsonAsync<JsonElement[]>("policy", "list")).Single().GetProperty("id").GetString()!;
        var revokedAt = Stopwatch.StartNew();
        await controller.DeleteAsync("/api/v1/policies/" + policy);

        // The live flow ends: the read returns end-of-stream (or the connection is reset) within 2 s of the revocation.
        using var bound = CancellationTokenSource.CreateLinkedTokenSource(ct);
        bound.CancelAfter(TimeSpan.FromSeconds(5));
        try
        {
            while (await stream.ReadAsync(buffer, bound.Token) > 0)
            {
            }
        }
        catch (IOException)
        {
        }
        Assert.True(revokedAt.Elapsed < TimeSpan.FromSeconds(2), $"the flow closed {revokedAt.Elapsed.TotalMilliseconds:0} ms after the revocation");
        await deployment.Connector.WaitForLineAsync(l => l.Contains("revoked", StringComparison.Ordinal), TimeSpan.FromSeconds(5), "revocation logged");

        // And a new flow is refused: the forward closes it at once, with the reason in the client's log.
        using var again = new TcpClient();
        await again.ConnectAsync(forward, ct);
        var read = await again.GetStream().ReadAsync(buffer, ct).AsTask().WaitAsync(TimeSpan.FromSeconds(20), ct);
        Assert.Equal(0, read);
    }

    [Fact]
    public async Task Psql_reaches_a_real_postgres_through_a_port_forward()
    {
        var ct = TestContext.Current.CancellationToken;
        if (TestDatabase.PostgresAdmin is null || !File.Exists("/usr/bin/psql"))
        {
            Assert.Skip("needs psql and a local PostgreSQL (FERRY_TEST_POSTGRES); scripts/test.sh installs and starts them");
        }
        var pg = new Npgsql.NpgsqlConnectionStringBuilder(TestDatabase.PostgresAdmin);
        await using var controller = await ControllerInstance.StartAsync(StoreKind.Sqlite);
        await using var deployment = await TestDeployment.StartAsync(controller, "127.0.0.1", pg.Port.ToString(System.Globalization.CultureInfo.InvariantCulture), ct);
        var state = Path.Combine(deployment.Directory, "client");
        await using var client = FerryProcess.Start("client",
            ["client", "--state", state, "up", "--controller", controller.Url, "--controller-fingerprint", controller.Fingerprint, "--socks", "off", "--forward", $"0=127.0.0.1:{pg.Port}"],
            new Dictionary<string, string?> { ["FERRY_SERVICE_ACCOUNT_KEY"] = deployment.ServiceAccountKey });
        var forward = Endpoint(await client.WaitForLineAsync(l => l.Contains($"forward 127.0.0.1:{pg.Port} listening on", StringComparison.Ordinal), TimeSpan.FromSeconds(30), "forward listener"));
        // psql connects at once, while sign-in, the device certificate and the relay list may still be on their way:
        // the forward holds the connection until they are, instead of closing it.

        var info = new ProcessStartInfo("psql") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var arg in new[] { "-h", "127.0.0.1", "-p", forward.Port.ToString(System.Globalization.CultureInfo.InvariantCulture), "-U", pg.Username!, "-d", pg.Database!, "-tAc", "SELECT 'through ferry ' || 6 * 7" })
        {
            info.ArgumentList.Add(arg);
        }
        info.Environment["PGPASSWORD"] = pg.Password;
        info.Environment["PGCONNECT_TIMEOUT"] = "20";
        using var psql = Process.Start(info)!;
        var output = await psql.StandardOutput.ReadToEndAsync(ct).WaitAsync(TimeSpan.FromSeconds(60), ct);
        await psql.WaitForExitAsync(ct).WaitAsync(TimeSpan.FromSeconds(10), ct);
        Assert.True(psql.ExitCode == 0,
            $"{await psql.StandardError.ReadToEndAsync(ct)}\nclient:\n{client.Output}\nconnector:\n{deployment.Connector.Output}");
        Assert.Equal("through ferry 42", output.Trim());
    }

    private const string PrivateBody = "hello from the private network";

    private static IPEndPoint Endpoint(string logLine) => IPEndPoint.Parse(logLine[(logLine.LastIndexOf(' ') + 1)..]);

    private static async Task<WebApplication> PrivateWebAsync(CancellationToken ct)
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        builder.WebHost.ConfigureKestrel(k => k.Listen(IPAddress.Loopback, 0));
        var app = builder.Build();
        app.MapGet("/hello", () => PrivateBody);
        await app.StartAsync(ct);
        return app;
    }

    private static async Task<(int Code, string Output)> CurlAsync(string[] args, CancellationToken ct)
    {
        var info = new ProcessStartInfo("curl") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var arg in new[] { "-sS", "--max-time", "20" }.Concat(args))
        {
            info.ArgumentList.Add(arg);
        }
        using var process = Process.Start(info)!;
        var stdout = process.StandardOutput.ReadToEndAsync(ct);
        var stderr = process.StandardError.ReadToEndAsync(ct);
        await process.WaitForExitAsync(ct).WaitAsync(TimeSpan.FromSeconds(30), ct);
        return (process.ExitCode, (await stdout) + (process.ExitCode == 0 && !args.Contains("-v") ? "" : await stderr));
    }
}
