using System.Diagnostics;
using System.Net;
using System.Text.RegularExpressions;

namespace Ferry.Stun.Tests;

/// <summary>Ferry's STUN against coturn (Debian package 'coturn'), the peer the design names.</summary>
public sealed partial class InteropTests
{
    [Fact]
    public async Task CoturnStunClient_LearnsItsAddressFromOurServer()
    {
        string? stunClient = TestSupport.FindExecutable("turnutils_stunclient");
        if (stunClient is null)
        {
            Assert.Skip("turnutils_stunclient not found; install the Debian package 'coturn'");
        }

        var logger = new CapturingLogger();
        await using var server = new StunServer(TestSupport.LoopbackServer(), logger);
        server.Start();
        int port = server.LocalEndPoints[0].Port;

        var (exitCode, output) = await TestSupport.RunProcessAsync(stunClient, ["-p", port.ToString(System.Globalization.CultureInfo.InvariantCulture), "127.0.0.1"], TimeSpan.FromSeconds(20));
        TestSupport.Output(output);

        Assert.Equal(0, exitCode);
        var match = ReflexiveAddress().Match(output);
        Assert.True(match.Success, $"no reflexive address in: {output}");
        var printed = IPEndPoint.Parse(match.Groups[1].Value);
        Assert.Equal(IPAddress.Loopback, printed.Address);

        // The port it printed is the one our server saw it send from.
        Assert.Contains(logger.Messages, m => m.Contains($"Answered {printed}", StringComparison.Ordinal));
        Assert.True(server.GetStatistics().SuccessResponses >= 1);
    }

    [Fact]
    public async Task OurClient_LearnsItsAddressFromCoturn()
    {
        string? turnServer = TestSupport.FindExecutable("turnserver");
        if (turnServer is null)
        {
            Assert.Skip("turnserver not found; install the Debian package 'coturn'");
        }

        string dir = Directory.CreateTempSubdirectory("ferry-coturn-").FullName;
        int port = TestSupport.FreeUdpPort();
        var info = new ProcessStartInfo(turnServer)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (var arg in new[]
        {
            "-n", // no configuration file
            "--listening-ip=127.0.0.1",
            $"--listening-port={port}",
            "--stun-only",
            "--no-cli",
            "--no-tls",
            "--no-dtls",
            "--no-tcp",
            "--log-file=stdout",
            "--simple-log",
            $"--pidfile={Path.Combine(dir, "turnserver.pid")}",
            $"--userdb={Path.Combine(dir, "turndb")}",
        })
        {
            info.ArgumentList.Add(arg);
        }

        using var process = Process.Start(info) ?? throw new InvalidOperationException("turnserver did not start");
        var log = new System.Collections.Concurrent.ConcurrentQueue<string>();
        process.OutputDataReceived += (_, e) => log.Enqueue(e.Data ?? string.Empty);
        process.ErrorDataReceived += (_, e) => log.Enqueue(e.Data ?? string.Empty);
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        try
        {
            // No readiness polling: the retransmissions (200 ms, doubling) cover coturn's start-up.
            await using var client = StunSocketClient.Create(new IPEndPoint(IPAddress.Loopback, 0), new StunClientOptions
            {
                InitialRto = TimeSpan.FromMilliseconds(200),
                MaxTransmissions = 7,
                FinalWaitMultiplier = 4,
            });
            var result = await client.QueryAsync(new IPEndPoint(IPAddress.Loopback, port), TestContext.Current.CancellationToken)
                .WaitAsync(TimeSpan.FromSeconds(30), TestContext.Current.CancellationToken);
            TestSupport.Output(result.ToString());

            Assert.True(result.IsSuccess, $"{result}; coturn said: {string.Join('\n', log.TakeLast(20))}");
            Assert.Equal(client.LocalEndPoint, result.MappedAddress);
        }
        finally
        {
            if (!process.HasExited)
            {
                process.Kill(entireProcessTree: true);
            }

            await process.WaitForExitAsync(TestContext.Current.CancellationToken).WaitAsync(TimeSpan.FromSeconds(10), TestContext.Current.CancellationToken);
            Directory.Delete(dir, recursive: true);
        }
    }

    [GeneratedRegex(@"UDP reflexive addr: (\S+)")]
    private static partial Regex ReflexiveAddress();
}
