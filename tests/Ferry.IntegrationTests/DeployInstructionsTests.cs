using System.Globalization;
using System.Net.Http.Json;
using System.Text.RegularExpressions;
using Ferry.Core.Api;
using Ferry.IntegrationTests.Infrastructure;

namespace Ferry.IntegrationTests;

/// <summary>The systemd units that provisioning hands out (for connectors and relays) are valid and sandboxed, as systemd itself judges them.</summary>
public sealed partial class DeployInstructionsTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public async Task The_systemd_units_from_provisioning_pass_systemd_analyze_and_are_sandboxed()
    {
        Assert.SkipUnless(File.Exists("/usr/bin/systemd-analyze"), "systemd-analyze is not installed (Debian package systemd)");
        await using var controller = await ControllerInstance.StartAsync(StoreKind.Sqlite);
        await controller.AdminAsync("network", "create", "corp");
        using var http = controller.Http();
        var connector = await (await http.PostAsJsonAsync("/api/v1/connectors", new ConnectorProvisionRequest("corp", "c1"), Ct)).Content.ReadFromJsonAsync<ConnectorProvisioned>(ControllerInstance.Json, Ct);
        var relay = await (await http.PostAsJsonAsync("/api/v1/relays", new RelayProvisionRequest("r1"), Ct)).Content.ReadFromJsonAsync<RelayProvisioned>(ControllerInstance.Json, Ct);
        var folder = Directory.CreateTempSubdirectory("ferry-units-").FullName;
        try
        {
            foreach (var (name, unit) in new[] { ("ferry-connector-c1.service", connector!.Deploy.Systemd), ("ferry-relay-r1.service", relay!.Deploy.Systemd) })
            {
                // systemd checks that the program exists; the unit names where operators install it, this test the build's.
                await AssertSandboxedAsync(Path.Combine(folder, name), unit.Replace("/usr/local/bin/ferry", FerryProcess.BinaryPath, StringComparison.Ordinal));
            }
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    [Fact]
    public async Task The_systemd_units_in_deploy_pass_systemd_analyze_and_are_sandboxed()
    {
        Assert.SkipUnless(File.Exists("/usr/bin/systemd-analyze"), "systemd-analyze is not installed (Debian package systemd)");
        var units = Directory.GetFiles(Path.Combine(Repository.Root, "deploy", "systemd"), "*.service");
        Assert.Equal(["ferry-client@.service", "ferry-connector@.service", "ferry-controller.service", "ferry-relay@.service"], units.Select(Path.GetFileName).Order(StringComparer.Ordinal));
        var folder = Directory.CreateTempSubdirectory("ferry-units-").FullName;
        try
        {
            foreach (var unit in units)
            {
                // Templates are checked as an instance; the program path is this build's, as in the provisioning test.
                var name = Path.GetFileName(unit).Replace("@.", "@test.", StringComparison.Ordinal);
                var text = (await File.ReadAllTextAsync(unit, Ct)).Replace("/usr/local/bin/ferry", FerryProcess.BinaryPath, StringComparison.Ordinal);
                await AssertSandboxedAsync(Path.Combine(folder, name), text);
            }
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    private static async Task AssertSandboxedAsync(string path, string unit)
    {
        var name = Path.GetFileName(path);
        await File.WriteAllTextAsync(path, unit, Ct);
        var verify = await ExternalProcess.CaptureAsync("/usr/bin/systemd-analyze", ["verify", path], TimeSpan.FromSeconds(60), Ct);
        Assert.True(verify.ExitCode == 0 && verify.Stderr.Trim().Length == 0, $"{name} must pass systemd-analyze verify:\n{verify}\n{unit}");
        var security = await ExternalProcess.CaptureAsync("/usr/bin/systemd-analyze", ["security", "--offline=yes", "--no-pager", path], TimeSpan.FromSeconds(60), Ct);
        var exposure = ExposurePattern().Match(security.Stdout);
        Assert.True(exposure.Success, $"no exposure level in:\n{security}");
        var level = double.Parse(exposure.Groups[1].Value, CultureInfo.InvariantCulture);
        TestContext.Current.TestOutputHelper?.WriteLine($"{name}: exposure {level}");
        // systemd calls below 4.0 "OK"; an unsandboxed service scores 9.6 ("UNSAFE").
        Assert.True(level < 4.0, $"{name} must be sandboxed (exposure below 4.0), got {level}:\n{security.Stdout}");
    }

    [GeneratedRegex(@"Overall exposure level for \S+: (\d+(?:\.\d+)?)")]
    private static partial Regex ExposurePattern();
}
