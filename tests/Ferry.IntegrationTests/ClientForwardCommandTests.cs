using System.Net;
using System.Net.Sockets;
using Ferry.IntegrationTests.Infrastructure;

namespace Ferry.IntegrationTests;

/// <summary>'ferry client forward LOCAL HOST:PORT' adds a forward to the running client.</summary>
public sealed class ClientForwardCommandTests
{
    [Fact]
    public async Task A_forward_added_to_the_running_client_carries_connections_and_bad_ones_are_refused_with_the_reason()
    {
        var ct = TestContext.Current.CancellationToken;
        await using var controller = await ControllerInstance.StartAsync(StoreKind.Sqlite);
        await using var echo = new EchoServer(IPAddress.Loopback);
        var port = echo.Port.ToString(System.Globalization.CultureInfo.InvariantCulture);
        await using var deployment = await TestDeployment.StartAsync(controller, "127.0.0.1", port, ct);
        var state = Path.Combine(deployment.Directory, "client");
        await using var client = FerryProcess.Start("client",
            ["client", "--state", state, "up", "--controller", controller.Url, "--controller-fingerprint", controller.Fingerprint, "--socks", "off"],
            new Dictionary<string, string?> { ["FERRY_SERVICE_ACCOUNT_KEY"] = deployment.ServiceAccountKey });
        await client.WaitForLineAsync(l => l.Contains("Control socket", StringComparison.OrdinalIgnoreCase), TimeSpan.FromSeconds(30), "control socket");

        var added = await FerryCli.RunAsync(["client", "--state", state, "forward", "0", $"127.0.0.1:{port}"]);
        Assert.True(added.ExitCode == 0, added.ToString());
        Assert.StartsWith("forward 127.0.0.1:", added.Stdout, StringComparison.Ordinal);
        var listening = IPEndPoint.Parse(added.Stdout.Split(' ')[1]);

        using (var tcp = new TcpClient())
        {
            await tcp.ConnectAsync(listening, ct);
            var stream = tcp.GetStream();
            var payload = "added at run time"u8.ToArray();
            await stream.WriteAsync(payload, ct);
            tcp.Client.Shutdown(SocketShutdown.Send);
            using var back = new MemoryStream();
            await stream.CopyToAsync(back, ct).WaitAsync(TimeSpan.FromSeconds(30), ct);
            Assert.True(payload.AsSpan().SequenceEqual(back.ToArray()), $"echo differs; client:\n{client.Output}");
        }
        var status = await FerryCli.RunAsync(["client", "--state", state, "status"]);
        Assert.Contains($"forward 127.0.0.1:{port} {listening}", status.Stdout, StringComparison.Ordinal);

        var taken = await FerryCli.RunAsync(["client", "--state", state, "forward", listening.Port.ToString(System.Globalization.CultureInfo.InvariantCulture), $"127.0.0.1:{port}"]);
        Assert.NotEqual(0, taken.ExitCode);
        Assert.Contains("its loopback port is in use", taken.Stderr, StringComparison.Ordinal);

        var malformed = await FerryCli.RunAsync(["client", "--state", state, "forward", "0", "no-port-here"]);
        Assert.Equal(2, malformed.ExitCode);
        Assert.Contains("is not LOCALPORT=HOST:PORT", malformed.Stderr, StringComparison.Ordinal);

        var nobody = await FerryCli.RunAsync(["client", "--state", Path.Combine(deployment.Directory, "nobody"), "forward", "0", $"127.0.0.1:{port}"]);
        Assert.NotEqual(0, nobody.ExitCode);
        Assert.Contains("no client is running with state folder", nobody.Stderr, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Status_of_a_client_that_accepts_but_never_answers_says_so_instead_of_exiting_silently()
    {
        var state = Directory.CreateTempSubdirectory("ferry-hung-").FullName;
        try
        {
            // A hung daemon: its control socket takes the connection and the request, and nothing ever comes back.
            using var listener = new System.Net.Sockets.Socket(System.Net.Sockets.AddressFamily.Unix, System.Net.Sockets.SocketType.Stream, System.Net.Sockets.ProtocolType.Unspecified);
            listener.Bind(new System.Net.Sockets.UnixDomainSocketEndPoint(Path.Combine(state, "client.sock")));
            listener.Listen(4);
            var held = new List<System.Net.Sockets.Socket>();
            var accepting = Task.Run(async () =>
            {
                while (true)
                {
                    held.Add(await listener.AcceptAsync(TestContext.Current.CancellationToken));
                }
            }, TestContext.Current.CancellationToken);

            var status = await FerryCli.RunAsync(["client", "--state", state, "status"], timeout: TimeSpan.FromSeconds(60));
            Assert.Equal(1, status.ExitCode);
            Assert.Contains("did not answer within 10 s", status.Stderr, StringComparison.Ordinal);
            Assert.StartsWith("error: ", status.Stderr, StringComparison.Ordinal);
            listener.Dispose();
            await accepting.ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing | ConfigureAwaitOptions.ContinueOnCapturedContext);
            foreach (var socket in held)
            {
                socket.Dispose();
            }
        }
        finally
        {
            Directory.Delete(state, recursive: true);
        }
    }
}
