using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using Ferry.IntegrationTests.Infrastructure;

namespace Ferry.IntegrationTests;

/// <summary>A real OpenSSH client reaches a real OpenSSH server with 'ferry client connect %h %p' as its ProxyCommand.</summary>
public sealed class SshProxyCommandTests
{
    [Fact]
    public async Task Ssh_runs_a_remote_command_through_ferry_client_connect_as_its_proxy_command()
    {
        var ct = TestContext.Current.CancellationToken;
        Assert.SkipUnless(File.Exists(SshServer.Daemon) && File.Exists("/usr/bin/ssh") && File.Exists("/usr/bin/ssh-keygen"),
            "needs OpenSSH (Debian packages openssh-server and openssh-client; scripts/test.sh installs them)");
        Assert.SkipUnless(Environment.UserName == "root", $"needs root: sshd changes to the logged-in user (running as '{Environment.UserName}')");

        var dir = Directory.CreateTempSubdirectory("ferry-ssh-").FullName;
        try
        {
            await using var sshd = await SshServer.StartAsync(dir, ct);
            await using var controller = await ControllerInstance.StartAsync(StoreKind.Sqlite);
            await using var deployment = await TestDeployment.StartAsync(controller, "127.0.0.1", sshd.Port.ToString(CultureInfo.InvariantCulture), ct);
            var state = Path.Combine(deployment.Directory, "client");
            await using var client = FerryProcess.Start("client",
                ["client", "--state", state, "up", "--controller", controller.Url, "--controller-fingerprint", controller.Fingerprint, "--socks", "0"],
                new Dictionary<string, string?> { ["FERRY_SERVICE_ACCOUNT_KEY"] = deployment.ServiceAccountKey });
            await client.WaitForLineAsync(l => l.Contains("socks5 listening on", StringComparison.Ordinal), TimeSpan.FromSeconds(30), "SOCKS5 listener");
            await client.WaitForLineAsync(l => l.Contains("Resources granted now: 1", StringComparison.Ordinal), TimeSpan.FromSeconds(30), "grant");

            // ssh starts the ProxyCommand through the shell, with %h and %p filled in, and speaks SSH over its stdin/stdout.
            var proxyCommand = $"{FerryProcess.BinaryPath} client --state {state} connect %h %p";
            var ssh = await ExternalProcess.CaptureAsync("ssh",
                ["-F", "/dev/null", "-i", sshd.ClientKey, "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                 "-o", "BatchMode=yes", "-o", "ConnectTimeout=30", "-o", "LogLevel=ERROR", "-o", $"ProxyCommand={proxyCommand}",
                 "-p", sshd.Port.ToString(CultureInfo.InvariantCulture), "root@127.0.0.1", "echo through-ferry-$((6*7)); uname -n"],
                TimeSpan.FromSeconds(60), ct);
            var diagnostics = $"{ssh}\n--- sshd:\n{sshd.Output}\n--- client:\n{client.Output}\n--- connector:\n{deployment.Connector.Output}";
            Assert.True(ssh.ExitCode == 0, diagnostics);

            // The remote shell's own answer: the arithmetic was done by the remote side, and it names the host sshd runs on.
            var lines = ssh.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
            var nodeName = (await File.ReadAllTextAsync("/proc/sys/kernel/hostname", ct)).Trim();
            Assert.True(lines.Length == 2 && lines[0] == "through-ferry-42" && lines[1] == nodeName, diagnostics);
            Assert.Contains("Accepted publickey for root", sshd.Output, StringComparison.Ordinal);

            // And the bytes went through Ferry: the client opened the flow to the resource, the connector dialled sshd.
            var destination = $"127.0.0.1:{sshd.Port}";
            await client.WaitForLineAsync(l => l.Contains("socks5 flow to ", StringComparison.Ordinal) && l.Contains($"{destination} opened through svc", StringComparison.Ordinal), TimeSpan.FromSeconds(5), "flow opened to sshd");
            await deployment.Connector.WaitForLineAsync(l => l.Contains($"{destination} connected via {destination}", StringComparison.Ordinal), TimeSpan.FromSeconds(5), "connector dialling sshd");

            // A port beyond 65535 is an error, not silently wrapped onto another port (PORT + 65536 would land on sshd).
            await using var wrapped = FerryProcess.Start("connect", ["client", "--state", state, "connect", "127.0.0.1", (sshd.Port + 65536).ToString(CultureInfo.InvariantCulture)]);
            wrapped.Input.Close();
            var wrappedExit = await wrapped.WaitForExitAsync(TimeSpan.FromSeconds(30));
            Assert.True(wrappedExit == 2 && wrapped.Stderr.Contains("is not a TCP port (1-65535)", StringComparison.Ordinal) && !wrapped.Stdout.Contains("SSH-2.0", StringComparison.Ordinal),
                $"exit {wrappedExit}\n{wrapped.Output}");
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    /// <summary>
    /// A throw-away OpenSSH server in the foreground on a free loopback port: its own host key, config, pid file and one
    /// authorized client key, all in a temp folder. Killed with its per-connection children on dispose.
    /// </summary>
    private sealed class SshServer : IAsyncDisposable
    {
        public const string Daemon = "/usr/sbin/sshd";

        private readonly Process _process;
        private readonly List<string> _lines = [];
        private readonly Lock _gate = new();

        private SshServer(Process process, int port, string clientKey)
        {
            _process = process;
            Port = port;
            ClientKey = clientKey;
        }

        public int Port { get; }

        /// <summary>The private key whose public half is the only authorized key.</summary>
        public string ClientKey { get; }

        public string Output
        {
            get
            {
                lock (_gate)
                {
                    return string.Join('\n', _lines);
                }
            }
        }

        public static async Task<SshServer> StartAsync(string dir, CancellationToken ct)
        {
            // sshd refuses to start without its privilege-separation folder, which only the packaged service creates.
            Directory.CreateDirectory("/run/sshd");
            var hostKey = Path.Combine(dir, "ssh_host_ed25519_key");
            var clientKey = Path.Combine(dir, "id_ed25519");
            foreach (var key in new[] { hostKey, clientKey })
            {
                var keygen = await ExternalProcess.CaptureAsync("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-C", "ferry-test", "-f", key], TimeSpan.FromSeconds(30), ct);
                Assert.True(keygen.ExitCode == 0, $"ssh-keygen failed: {keygen}");
            }
            var authorizedKeys = Path.Combine(dir, "authorized_keys");
            File.Copy(clientKey + ".pub", authorizedKeys);

            // The free port is found by binding and releasing it; another process may take it in between, so try a few.
            for (var attempt = 1; ; attempt++)
            {
                var port = FreePort();
                var config = Path.Combine(dir, "sshd_config");
                await File.WriteAllLinesAsync(config,
                [
                    $"ListenAddress 127.0.0.1:{port}",
                    $"HostKey {hostKey}",
                    $"PidFile {Path.Combine(dir, "sshd.pid")}",
                    $"AuthorizedKeysFile {authorizedKeys}",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PermitRootLogin prohibit-password",
                    "UsePAM no",
                    "StrictModes no",
                ], ct);
                var server = Start(port, clientKey, config);
                var listening = $"Server listening on 127.0.0.1 port {port}.";
                var deadline = DateTime.UtcNow.AddSeconds(15);
                while (!server.Output.Contains(listening, StringComparison.Ordinal) && !server._process.HasExited && DateTime.UtcNow < deadline)
                {
                    await Task.Delay(50, ct);
                }
                if (server.Output.Contains(listening, StringComparison.Ordinal))
                {
                    return server;
                }
                await server.DisposeAsync();
                if (attempt == 3 || !server.Output.Contains("Address already in use", StringComparison.Ordinal))
                {
                    throw new Xunit.Sdk.XunitException($"sshd did not start listening on 127.0.0.1:{port} within 15 s. Output:\n{server.Output}");
                }
            }
        }

        private static SshServer Start(int port, string clientKey, string config)
        {
            // -D: stay in the foreground (the process is ours to kill); -e: log to stderr, read by the test.
            var info = new ProcessStartInfo(Daemon) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
            foreach (var arg in new[] { "-D", "-e", "-f", config })
            {
                info.ArgumentList.Add(arg);
            }
            var process = new Process { StartInfo = info };
            var server = new SshServer(process, port, clientKey);
            process.OutputDataReceived += (_, e) => server.Add(e.Data);
            process.ErrorDataReceived += (_, e) => server.Add(e.Data);
            process.Start();
            process.BeginOutputReadLine();
            process.BeginErrorReadLine();
            return server;
        }

        private static int FreePort()
        {
            using var probe = new TcpListener(IPAddress.Loopback, 0);
            probe.Start();
            return ((IPEndPoint)probe.LocalEndpoint).Port;
        }

        private void Add(string? line)
        {
            if (line is not null)
            {
                lock (_gate)
                {
                    _lines.Add(line);
                }
            }
        }

        public async ValueTask DisposeAsync()
        {
            try
            {
                if (!_process.HasExited)
                {
                    _process.Kill(entireProcessTree: true);
                    using var bound = new CancellationTokenSource(TimeSpan.FromSeconds(10));
                    await _process.WaitForExitAsync(bound.Token);
                }
            }
            catch (Exception e) when (e is InvalidOperationException or OperationCanceledException)
            {
            }
            _process.Dispose();
        }
    }
}
