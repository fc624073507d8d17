// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {Strings} from "@openzeppelin/contracts/utils/Strings.sol";

/// The subset of forge's cheatcodes these tests use (forge serves them at the address below).
interface Vm {
    function prank(address sender) external;
    function startPrank(address sender) external;
    function stopPrank() external;
    function warp(uint256 timestamp) external;
    function expectRevert() external;
    function expectRevert(bytes4 selector) external;
    function expectRevert(bytes calldata revertData) external;
    function expectEmit() external;
    function addr(uint256 privateKey) external pure returns (address);
    function sign(uint256 privateKey, bytes32 digest) external pure returns (uint8 v, bytes32 r, bytes32 s);
    function signCompact(uint256 privateKey, bytes32 digest) external pure returns (bytes32 r, bytes32 vs);
    function assume(bool condition) external pure;
    function label(address account, string calldata newLabel) external;
}

/// A minimal test base (forge-std on npm is stale): cheatcodes, assertions that revert with a message, `bound`.
abstract contract Test {
    Vm internal constant vm = Vm(0x7109709ECfa91a80626fF3989D68f67F5b1DD12D);

    event log_named_uint(string key, uint256 val);

    function fail(string memory message) internal pure {
        revert(message);
    }

    function assertTrue(bool ok, string memory message) internal pure {
        if (!ok) revert(message);
    }

    function assertFalse(bool ok, string memory message) internal pure {
        if (ok) revert(message);
    }

    function assertEq(uint256 a, uint256 b, string memory message) internal pure {
        if (a != b) {
            revert(string.concat(message, ": ", Strings.toString(a), " != ", Strings.toString(b)));
        }
    }

    function assertEq(address a, address b, string memory message) internal pure {
        if (a != b) {
            revert(string.concat(message, ": ", Strings.toHexString(a), " != ", Strings.toHexString(b)));
        }
    }

    function assertEq(bytes32 a, bytes32 b, string memory message) internal pure {
        if (a != b) {
            revert(string.concat(message, ": ", Strings.toHexString(uint256(a)), " != ", Strings.toHexString(uint256(b))));
        }
    }

    function assertEq(string memory a, string memory b, string memory message) internal pure {
        if (keccak256(bytes(a)) != keccak256(bytes(b))) revert(string.concat(message, ": ", a, " != ", b));
    }

    function assertLe(uint256 a, uint256 b, string memory message) internal pure {
        if (a > b) revert(string.concat(message, ": ", Strings.toString(a), " > ", Strings.toString(b)));
    }

    /// Map any x into [lo, hi] (inclusive), uniformly enough for fuzzing.
    function bound(uint256 x, uint256 lo, uint256 hi) internal pure returns (uint256) {
        require(lo <= hi, "bound: lo > hi");
        if (hi - lo == type(uint256).max) return x;
        return lo + (x % (hi - lo + 1));
    }
}
