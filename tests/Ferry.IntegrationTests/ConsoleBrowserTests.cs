using System.Diagnostics;
using System.Text.Json;
using Ferry.Core.Api;
using Ferry.IntegrationTests.Infrastructure;

namespace Ferry.IntegrationTests;

/// <summary>
/// Issue 8: the admin console in a real browser (headless Debian chromium driven by playwright-core, in
/// tests/Ferry.ConsoleTests): sign-in with password and TOTP, a network and a connector provisioned from the page whose
/// shown tokens start the real daemon, which then shows online without a reload, a resource and a policy, the audit log.
/// Screenshots of the main pages land in artifacts/console-screenshots.
/// </summary>
public sealed class ConsoleBrowserTests
{
    private static readonly string ConsoleTests = Path.Combine(Repository.Root, "tests", "Ferry.ConsoleTests");

    [Fact]
    public async Task An_operator_runs_ferry_from_the_console_in_a_browser()
    {
        Assert.SkipUnless(File.Exists("/usr/bin/chromium"), "Debian's chromium is not installed (apt-get install chromium); scripts/test.sh installs it");
        Assert.SkipUnless(Directory.Exists(Path.Combine(ConsoleTests, "node_modules", "playwright-core")),
            $"playwright-core is not installed in {ConsoleTests} (npm ci there); scripts/test.sh does it");
        await using var controller = await ControllerInstance.StartAsync(StoreKind.Sqlite);
        var env = controller.AdminEnv();
        env["FERRY_PASSWORD"] = "a long operator password";
        var created = await FerryCli.RunAsync(["admin", "operator", "create", "ops", "--json"], env);
        Assert.True(created.ExitCode == 0, created.ToString());
        var secret = JsonSerializer.Deserialize<OperatorCreated>(created.Stdout, ControllerInstance.Json)!.TotpSecret;
        var work = Directory.CreateTempSubdirectory("ferry-console-").FullName;
        try
        {
            var info = new ProcessStartInfo("node") { WorkingDirectory = ConsoleTests, RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
            foreach (var arg in new[] { "--test", "--test-reporter=spec", "console.test.mjs" })
            {
                info.ArgumentList.Add(arg);
            }
            info.Environment["FERRY_URL"] = controller.Url;
            info.Environment["FERRY_OPERATOR"] = "ops";
            info.Environment["FERRY_PASSWORD"] = "a long operator password";
            info.Environment["FERRY_TOTP_SECRET"] = secret;
            info.Environment["FERRY_BINARY"] = FerryProcess.BinaryPath;
            info.Environment["FERRY_WORKDIR"] = work;
            info.Environment["FERRY_SCREENSHOTS"] = Path.Combine(Repository.Root, "artifacts", "console-screenshots");
            var result = await ExternalProcess.CaptureAsync(info, TimeSpan.FromMinutes(5), TestContext.Current.CancellationToken);
            TestContext.Current.TestOutputHelper?.WriteLine(result.Stdout);
            Assert.True(result.ExitCode == 0, $"the browser tests failed:\n{result}\n--- controller:\n{controller.Process.Output}");
        }
        finally
        {
            Directory.Delete(work, recursive: true);
        }
    }
}
